"""Static 8-bit post-training quantisation of an exported graph with ONNX Runtime (QDQ format,
int8 per-channel weights, uint8 activations), calibrated on images through a config's test pipeline, and a count of
what stayed in float (a fused SLAB graph has no normalisation node to leave there)."""
import collections

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

from .. import apis
from .graph import NORM_OPS, graph_inputs, nodes_in_modules, read_graph
from .onnx_detector import Preprocessor

# The operators that carry the compute and that ONNX Runtime runs in int8 (QLinearConv,
# QLinearMatMul, ...): quantised in the backbone and neck.
QUANTIZED_OPS = ('Conv', 'MatMul', 'Gemm')
# Scopes (module names) quantised by default: the parts that fusion changes; the heads and
# the post-processing (RoiAlign, NMS) stay in float.
DEFAULT_PARTS = ('backbone', 'neck')
CALIBRATION_METHODS = ('MinMax', 'Percentile', 'Entropy')


def calibration_inputs(config, images, input_names, cfg_options=None, logger=None):
    """Each image file through ``config``'s test pipeline and data preprocessor, as the graph
    takes it: a list of ``{'images': (1, 3, H, W)[, 'image_shape': (2,)]}``. A file that
    cannot be read as an image is refused by name (ValueError)."""
    preprocess = Preprocessor(config, cfg_options)
    feeds = []
    images = list(images)
    for k, path in enumerate(images, 1):
        try:
            array, sample = preprocess(path)
        except (AssertionError, OSError, ValueError) as e:   # mmcv asserts 'failed to load image'
            raise ValueError(f'calibration image {path!r} cannot be read ({e}); remove it from the calibration '
                             f'images or replace it with a readable one') from None
        if logger and (k % 10 == 0 or k == len(images)):
            logger(f'[int8] preprocessed {k}/{len(images)} calibration images')
        feed = {'images': array.astype(np.float32)}
        if 'image_shape' in input_names:
            feed['image_shape'] = np.asarray(sample.img_shape, dtype=np.int64)
        feeds.append(feed)
    return feeds


class _Feeds:
    """An onnxruntime CalibrationDataReader over prepared feeds."""

    def __init__(self, feeds):
        self.feeds = iter(feeds)

    def get_next(self):
        return next(self.feeds, None)


def float_compute_nodes(onnx_model, parts, op_types=QUANTIZED_OPS):
    """``{op type: count}`` of the nodes in ``parts`` that run in float in a QDQ graph: every
    node but the quantised ops and the Q/DQ nodes themselves (LayerNormalization, Softmax,
    the elementwise ops between the quantised ones)."""
    skip = set(op_types) | {'QuantizeLinear', 'DequantizeLinear', 'Constant', 'Shape', 'Gather', 'Unsqueeze',
                                 'Concat', 'Reshape', 'Cast', 'Slice', 'Squeeze', 'Transpose', 'Range', 'Expand',
                                 'ConstantOfShape', 'Equal', 'Where', 'Identity', 'Flatten'}
    counts = collections.Counter(n.op_type for n in nodes_in_modules(onnx_model, parts) if n.op_type not in skip)
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def quantize_graph(float_path, out, config, calibration_images, cfg_options=None, parts=DEFAULT_PARTS,
                   per_channel=True, method='MinMax', op_types=QUANTIZED_OPS, logger=print):
    """Write ``out``, the int8 (QDQ) version of the graph ``float_path``.

    The ``op_types`` nodes (default ``Conv``/``MatMul``/``Gemm``; data-movement and elementwise
    ops such as ``Add``, ``Transpose``, ``Resize`` can be added) inside ``parts`` get int8 weights (per output
    channel with ``per_channel``) and uint8 activations whose ranges come from running the
    float graph on ``calibration_images`` (files, through ``config``'s test pipeline) with
    ``method``. Returns a report: the path, how many nodes were quantised, the node counts
    left in float in ``parts`` (:func:`float_compute_nodes`), and the normalisation nodes
    among them.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f'calibration method must be one of {CALIBRATION_METHODS}, got {method!r}')
    images = list(calibration_images)
    if not images:
        raise ValueError('int8 calibration needs at least one image; give a folder of images (e.g. a few dozen '
                         'of the training set)')
    model = read_graph(float_path)
    nodes = [n.name for n in nodes_in_modules(model, parts, op_types)]
    if not nodes:
        raise ValueError(f'{float_path}: no {"/".join(op_types)} node in the scopes {list(parts)}: nothing to '
                         f'quantise (is it a graph exported by slab-mmdet?)')
    feeds = calibration_inputs(config, images, graph_inputs(model), cfg_options, logger)
    logger(f'[int8] calibrating {len(nodes)} nodes of {", ".join(parts)} on {len(feeds)} images ({method})')
    with apis.atomic_output(out, suffix='.onnx') as tmp:
        # uint8 activations with int8 weights (U8S8): ONNX Runtime's fast x86 int8 kernels (VNNI);
        # int8 activations (S8S8) measured slower than float here (docs/benchmarks.md, "Int8").
        quantize_static(float_path, tmp, _Feeds(feeds), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(op_types), nodes_to_quantize=nodes,
                        calibrate_method=getattr(CalibrationMethod, method),
                        extra_options=dict(WeightSymmetric=True))
        quantized = onnx.load(tmp)
    left = float_compute_nodes(quantized, parts, op_types)
    report = dict(path=out, quantized_nodes=len(nodes), float_nodes=left,
                  float_norm_nodes={op: n for op, n in left.items() if op in NORM_OPS},
                  calibration_images=len(feeds), method=method, per_channel=per_channel, op_types=list(op_types))
    logger(f'[int8] wrote {out}: {len(nodes)} nodes in int8; left in float in {", ".join(parts)}: {left}')
    return report


__all__ = ['CALIBRATION_METHODS', 'DEFAULT_PARTS', 'QUANTIZED_OPS', 'calibration_inputs', 'float_compute_nodes',
           'quantize_graph']
