"""Int8 static quantisation of an exported graph (slab_mmdet.deploy.quantize): the backbone and
neck's Conv/MatMul/Gemm nodes go to QDQ int8, nothing of a fused SLAB graph's normalisation stays
in float (it has none), the int8 graph stays close to the float one, and bad input is refused."""
import numpy as np
import pytest

from slab_mmdet.benchmark.images import list_mini_coco_val
from slab_mmdet.deploy.graph import onnx_session, read_graph
from slab_mmdet.deploy.quantize import calibration_inputs, quantize_graph
from testing_utils.helpers import REPO_ROOT

CONFIG = f'{REPO_ROOT}/configs/mini/mask_rcnn_slab_pvt_t.py'


@pytest.fixture
def float_graph(slab_pvt_t_features_onnx):
    return slab_pvt_t_features_onnx


def test_int8_graph_quantises_backbone_and_neck_and_stays_close(float_graph, mini_coco, tmp_path):
    images = list_mini_coco_val(mini_coco)[:3]
    out = str(tmp_path / 'int8.onnx')
    lines = []
    report = quantize_graph(float_graph, out, CONFIG, images, logger=lines.append)
    graph = read_graph(out)
    ops = [n.op_type for n in graph.graph.node]
    assert report['quantized_nodes'] > 20 and ops.count('QuantizeLinear') >= report['quantized_nodes'] // 2
    assert report['float_norm_nodes'] == {} and report['calibration_images'] == 3
    assert lines[0] == '[int8] preprocessed 3/3 calibration images'
    assert lines[1].startswith(f'[int8] calibrating {report["quantized_nodes"]} nodes of backbone, neck on 3 images')
    # The int8 graph answers like the float one (8-bit activations: a few percent of the range).
    feed = calibration_inputs(CONFIG, images[:1], ['images'])[0]
    ref = onnx_session(float_graph).run(None, feed)
    got = onnx_session(out).run(None, feed)
    for a, b in zip(ref, got):
        assert np.abs(a - b).max() / np.abs(a).max() < 0.15


def test_bad_quantisation_input_is_refused(float_graph, tmp_path):
    out = str(tmp_path / 'int8.onnx')
    with pytest.raises(ValueError, match=r"calibration method must be one of \('MinMax', 'Percentile', 'Entropy'\), "
                                         r"got 'max'"):
        quantize_graph(float_graph, out, CONFIG, ['x.jpg'], method='max')
    with pytest.raises(ValueError, match='int8 calibration needs at least one image'):
        quantize_graph(float_graph, out, CONFIG, [])
    with pytest.raises(ValueError, match=r"no Conv/MatMul/Gemm node in the scopes \['roi_head'\]: nothing to "
                                         r'quantise'):
        quantize_graph(float_graph, out, CONFIG, ['x.jpg'], parts=('roi_head',))
    assert not (tmp_path / 'int8.onnx').exists()
