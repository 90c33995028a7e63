"""OpenVINO (the optional extra) runs the exported graphs as ONNX Runtime does: backbone + neck
features within the exporter's 1e-4 at several sizes, whole-detector detections matched as the
exporter's check matches them; without the extra, a clear message says how to install it."""
import builtins

import numpy as np
import pytest

from slab_mmdet.deploy import fuse_detector
from slab_mmdet.deploy.equivalence import runtime_output_differences
from slab_mmdet.deploy.graph import onnx_session
from slab_mmdet.deploy.onnx_export import export_onnx
from slab_mmdet.deploy.openvino_runtime import OpenVinoGraph, import_openvino
from testing_utils.helpers import annealed_mask_rcnn

PVT = 'configs/mini/mask_rcnn_slab_pvt_t.py'
EXPORT_HW = (256, 320)


def test_missing_extra_says_how_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == 'openvino' or name.startswith('openvino.'):
            raise ImportError('No module named openvino')
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, '__import__', no_openvino)
    with pytest.raises(ImportError, match='make setup-openvino'):
        import_openvino()


def test_bad_arguments_and_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"precision 'int4'.*\('f32', 'bf16'\)"):
        OpenVinoGraph(str(tmp_path / 'x.onnx'), precision='int4')
    with pytest.raises(ValueError, match='threads must be an int >= 1'):
        OpenVinoGraph(str(tmp_path / 'x.onnx'), threads=0)
    with pytest.raises(FileNotFoundError, match='x.onnx'):
        OpenVinoGraph(str(tmp_path / 'x.onnx'))


@pytest.fixture(scope='module')
def graphs(tmp_path_factory):
    pytest.importorskip('openvino', reason='OpenVINO is an optional extra: make setup-openvino')
    model = annealed_mask_rcnn(PVT)
    fuse_detector(model)
    folder = tmp_path_factory.mktemp('openvino')
    out = {}
    for kind in ('features', 'detector'):
        path = str(folder / f'{kind}.onnx')
        info = export_onnx(model, path, detector=kind == 'detector', input_hw=EXPORT_HW, logger=lambda *a: None)
        out[kind] = (path, info['outputs'])
    return out


@pytest.mark.parametrize('hw', [EXPORT_HW, (250, 333), (97, 256)])
def test_openvino_gives_onnx_runtime_features(graphs, hw):
    path, names = graphs['features']
    feed = {'images': np.random.RandomState(0).randn(1, 3, *hw).astype(np.float32)}
    want = onnx_session(path, threads=2).run(None, feed)
    got = OpenVinoGraph(path, threads=2).run(feed)
    within, diff = runtime_output_differences(want, got, names, hw)
    assert [g.shape for g in got] == [w.shape for w in want]
    assert within(1e-4), diff
    # The comparison can fail: a perturbed level is found.
    got[0] = got[0] * 1.01
    assert not runtime_output_differences(want, got, names, hw)[0](1e-4)


def test_openvino_gives_onnx_runtime_detections(graphs):
    path, names = graphs['detector']
    feed = {'images': np.random.RandomState(1).randn(1, 3, *EXPORT_HW).astype(np.float32),
            'image_shape': np.asarray(EXPORT_HW, np.int64)}
    want = onnx_session(path, threads=2).run(None, feed)
    got = OpenVinoGraph(path, threads=2).run(feed)
    within, diff = runtime_output_differences(want, got, names, EXPORT_HW)
    assert diff['count'][0] > 0 and within(1e-4), diff
    with pytest.raises(ValueError, match=r"inputs \['image_shape'\] missing"):
        OpenVinoGraph(path).run({'images': feed['images']})
