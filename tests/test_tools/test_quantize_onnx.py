"""tools/quantize_onnx.py: a float graph and a calibration folder in, an int8 graph out with a
one-line report; every bad input (a missing or empty folder, an unreadable image, a corrupt
graph, an existing output) refused naming it, leaving no file."""
import os

import pytest

from slab_mmdet.deploy.graph import read_graph
from testing_utils.helpers import REPO_ROOT, load_script

CONFIG = f'{REPO_ROOT}/configs/mini/mask_rcnn_slab_pvt_t.py'


def _main(argv):
    return load_script('tools/quantize_onnx.py', 'quantize_onnx_under_test').main(argv)


@pytest.fixture
def float_graph(slab_pvt_t_features_onnx):
    return slab_pvt_t_features_onnx


def test_quantises_with_the_first_images_of_the_folder_and_reports(float_graph, mini_coco, tmp_path, capsys):
    out = str(tmp_path / 'features.int8.onnx')
    assert _main([CONFIG, float_graph, '--calib', f'{mini_coco}/val', '--num-images', '2', '--out', out]) == 0
    text = capsys.readouterr().out
    assert '[int8] preprocessed 2/2 calibration images' in text
    assert f'[int8] ok: {out}: ' in text and 'from 2 images (MinMax); normalisation left in float: none' in text
    assert any(n.op_type == 'QuantizeLinear' for n in read_graph(out).graph.node)


def test_bad_input_is_refused_naming_it(float_graph, mini_coco, tmp_path, capsys):
    out = str(tmp_path / 'int8.onnx')
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'notes.txt').write_text('no images here')
    bad = tmp_path / 'bad'
    bad.mkdir()
    (bad / 'broken.jpg').write_bytes(b'not a jpeg')
    corrupt = tmp_path / 'corrupt.onnx'
    corrupt.write_bytes(b'\x08\x07garbage')
    existing = tmp_path / 'existing.onnx'
    existing.write_bytes(b'')
    cases = [
        ([CONFIG, float_graph, '--calib', str(tmp_path / 'nowhere'), '--out', out],
         f"--calib: image folder not found: '{tmp_path / 'nowhere'}'"),
        ([CONFIG, float_graph, '--calib', str(empty), '--out', out], "--calib: no images (.jpg"),
        ([CONFIG, float_graph, '--calib', str(bad), '--out', out],
         f"calibration image '{bad / 'broken.jpg'}' cannot be read"),
        ([CONFIG, str(corrupt), '--calib', f'{mini_coco}/val', '--out', out],
         f'{corrupt} is not a readable ONNX graph'),
        ([CONFIG, str(tmp_path / 'none.onnx'), '--calib', f'{mini_coco}/val', '--out', out], 'does not exist'),
        ([CONFIG, float_graph, '--calib', f'{mini_coco}/val', '--out', str(existing)], 'exists; pass --force'),
        ([CONFIG, float_graph, '--calib', f'{mini_coco}/val', '--out', float_graph], 'is the float graph itself'),
        ([CONFIG, float_graph, '--calib', f'{mini_coco}/val', '--out', str(tmp_path / 'x.txt')],
         'must name a .onnx file'),
        ([CONFIG, float_graph, '--calib', f'{mini_coco}/val', '--out', out, '--num-images', '0'],
         '--num-images must be >= 1, got 0'),
        (['configs/no_such.py', float_graph, '--calib', f'{mini_coco}/val', '--out', out], 'no_such.py'),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            _main(argv)
        assert message in str(e.value), (argv, str(e.value))
    assert not os.path.exists(out)
    with pytest.raises(SystemExit):
        _main([CONFIG, float_graph, '--calib', str(empty), '--out', out, '--method', 'max'])
    assert "invalid choice: 'max'" in capsys.readouterr().err


def test_openvino_quantisation_writes_an_ir_and_refuses_what_does_not_apply(float_graph, mini_coco, tmp_path, capsys):
    pytest.importorskip('nncf', reason='NNCF is part of the optional OpenVINO extra: make setup-openvino')
    out = str(tmp_path / 'features.int8.xml')
    assert _main([CONFIG, float_graph, '--calib', f'{mini_coco}/val', '--num-images', '2', '--openvino',
                  '--out', out]) == 0
    assert f'[int8] ok: {out}: ' in capsys.readouterr().out
    assert os.path.isfile(out) and os.path.isfile(out[:-4] + '.bin')
    cases = [(['--out', str(tmp_path / 'x.onnx')], 'must name a .xml file with --openvino'),
             (['--out', str(tmp_path / 'y.xml'), '--method', 'Entropy'], r'NNCF \(--openvino\) sets its own')]
    for extra, message in cases:
        with pytest.raises(SystemExit, match=message):
            _main([CONFIG, float_graph, '--calib', f'{mini_coco}/val', '--openvino'] + extra)
    assert not (tmp_path / 'y.xml').exists()
