"""Reading exported graphs (slab_mmdet.deploy.graph) and the one writer's contract
(slab_mmdet.deploy.onnx_export.export_onnx): written once, only after its check passed."""
import os

import pytest

from slab_mmdet.deploy.detector_graph import DetectorGraph
from slab_mmdet.deploy.graph import (graph_nodes, nodes_in_modules, norm_nodes, norm_nodes_outside, onnx_session,
                                     read_graph)
from slab_mmdet.deploy.onnx_export import FeatureExtractor, export_onnx
from testing_utils.helpers import annealed_mask_rcnn

PVT = 'configs/mini/mask_rcnn_slab_pvt_t.py'
SMALL_HW = (128, 160)


@pytest.fixture(scope='module')
def unfused():
    return annealed_mask_rcnn(PVT)


@pytest.mark.parametrize('reader', [read_graph, onnx_session], ids=['read_graph', 'onnx_session'])
def test_a_corrupt_or_missing_graph_is_refused_by_name(reader, tmp_path):
    bad = tmp_path / 'truncated.onnx'
    bad.write_bytes(b'\x08\x07' + b'not a protobuf' * 8)
    with pytest.raises(ValueError, match=rf'{bad} is not a readable ONNX graph \(\w+: .+\); export it again'):
        reader(str(bad))
    with pytest.raises(FileNotFoundError, match=r"ONNX graph '.*missing.onnx' does not exist"):
        reader(str(tmp_path / 'missing.onnx'))


def test_export_writes_once_after_its_check_and_the_graph_reads_back(unfused, tmp_path):
    """The check sees the written file, the in-memory graph and the traced module; the file
    appears at ``out`` only afterwards, and the scans read BatchNorm nodes by module scope."""
    out = tmp_path / 'features.onnx'
    seen = {}

    def check(path, proto, module):
        seen.update(exists_at_out=out.exists(), path=path, module=module)
        assert os.path.isfile(path) and read_graph(path) == proto
        return 'checked'

    info = export_onnx(unfused, str(out), input_hw=SMALL_HW, static=True, check=check, logger=lambda *a: None)
    assert seen['exists_at_out'] is False and seen['path'] != str(out) and not os.path.exists(seen['path'])
    assert isinstance(seen['module'], FeatureExtractor)
    assert info['check'] == 'checked' and info['static'] and not info['detector'] and out.is_file()
    graph = read_graph(str(out))
    norms = norm_nodes(graph)
    assert norms and set(norms) == {'BatchNormalization'}   # unfused RepBN (g = 0) exports BN nodes
    assert len(norm_nodes_outside(graph, ['backbone'])) == 0
    assert len(norm_nodes_outside(graph, ['neck'])) == len(norms)
    in_backbone = nodes_in_modules(graph, ['backbone'], ('BatchNormalization',))
    assert len(in_backbone) == len(norms) and all(n.name.startswith('/backbone/') for n in in_backbone)
    assert len(graph_nodes(graph)) >= len(graph.graph.node)


def test_a_failed_check_leaves_no_file(unfused, tmp_path):
    out = tmp_path / 'features.onnx'
    out.write_bytes(b'the previous graph')

    def check(path, proto, module):
        raise AssertionError('differs')
    with pytest.raises(AssertionError, match='differs'):
        export_onnx(unfused, str(out), input_hw=SMALL_HW, static=True, check=check, logger=lambda *a: None)
    assert out.read_bytes() == b'the previous graph' and os.listdir(tmp_path) == ['features.onnx']


def test_the_detector_graph_is_traced_once_and_carries_its_metadata(unfused, tmp_path):
    modules = []
    info = export_onnx(unfused, str(tmp_path / 'det.onnx'), detector=True, input_hw=SMALL_HW, opset=13,
                       check=lambda path, proto, module: modules.append(module), logger=lambda *a: None)
    assert len(modules) == 1 and isinstance(modules[0], DetectorGraph)
    assert info['opset'] == 16   # raised to RoiAlign's half-pixel opset
    meta = {p.key: p.value for p in read_graph(info['path']).metadata_props}
    assert meta['slab_mmdet.kind'] == 'detector' and 'slab_mmdet.static_input_hw' not in meta


def test_export_refuses_rpn_outputs_on_a_detector_graph(unfused, tmp_path):
    with pytest.raises(ValueError, match='with_rpn_head adds the RPN outputs to a backbone \\+ neck graph'):
        export_onnx(unfused, str(tmp_path / 'x.onnx'), detector=True, with_rpn_head=True, input_hw=SMALL_HW)
    assert not (tmp_path / 'x.onnx').exists()
