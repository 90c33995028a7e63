"""Static 8-bit post-training quantisation of an exported graph, calibrated on images through a
config's test pipeline: with ONNX Runtime (QDQ format, int8 per-channel weights, uint8
activations, and a count of what stayed in float: a fused SLAB graph has no normalisation node
to leave there), or with OpenVINO's NNCF into an OpenVINO IR (the optional extra)."""
import collections
import os
import os.path as osp
import shutil
import tempfile

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

from .. import apis
from .graph import NORM_OPS, graph_inputs, nodes_in_modules, read_graph
from .onnx_detector import Preprocessor
from .openvino_runtime import import_nncf, import_openvino, read_openvino_model

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


def _calibration_images(calibration_images):
    """The calibration image files as a list; none is refused."""
    images = list(calibration_images)
    if not images:
        raise ValueError('int8 calibration needs at least one image; give a folder of images (e.g. a few dozen '
                         'of the training set)')
    return images


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
    images = _calibration_images(calibration_images)
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


# Kept in float by quantize_with_openvino (both seen here, OpenVINO 2026.4 / NNCF 3.4): NNCF gives
# the activations entering SLA's depth-wise conv on V a dequantisation shaped by the calibration
# images' token count (through the reshape and transpose before the conv), and the compiled
# model then refuses other input sizes; and with the layer before a max-pool quantised (the
# FPN's extra level: a max-pool of its last level, itself an output), the pooled level came
# out with a wrong dequantisation (values ~1/4000 of float's), so the producers of MaxPool
# inputs stay float too.
OPENVINO_FLOAT_SCOPES = ('value_conv',)
OPENVINO_FLOAT_BEFORE = ('MaxPool',)


def _layers_before(model, op_types):
    """Names of the OpenVINO ops that feed an ``op_types`` op: the producer, and through an
    elementwise bias add the layer before it (constants aside)."""
    names = set()
    for op in model.get_ops():
        if op.get_type_name() not in op_types:
            continue
        frontier = [op.input_value(0).get_node()]
        while frontier:
            node = frontier.pop()
            names.add(node.get_friendly_name())
            if node.get_type_name() == 'Add':
                frontier += [v.get_node() for v in node.input_values() if v.get_node().get_type_name() != 'Constant']
    return names


def quantize_with_openvino(float_path, out, config, calibration_images, cfg_options=None, parts=DEFAULT_PARTS,
                           logger=print):
    """Write ``out`` (an OpenVINO IR: ``.xml`` and its ``.bin``), the graph ``float_path``
    quantised to int8 by NNCF (OpenVINO's post-training quantisation: its transformer
    preset, statistics from ``calibration_images`` run through ``config``'s test pipeline),
    inside the module scopes ``parts`` only (heads and post-processing stay float), outside
    :data:`OPENVINO_FLOAT_SCOPES` and not in the layers before a :data:`OPENVINO_FLOAT_BEFORE`
    node. Returns a report dict."""
    if not out.endswith('.xml'):
        raise ValueError(f'quantize_with_openvino writes an OpenVINO IR: out must end in .xml, got {out!r}')
    images = _calibration_images(calibration_images)
    nncf, ov = import_nncf(), import_openvino()
    model = read_openvino_model(ov.Core(), float_path)
    feeds = calibration_inputs(config, images, [port.get_any_name() for port in model.inputs], cfg_options, logger)
    # NNCF stacks each activation's statistics over the set: one image size for all, the
    # smaller images zero-padded at the bottom/right as mmdet pads a batch.
    h = max(f['images'].shape[2] for f in feeds)
    w = max(f['images'].shape[3] for f in feeds)
    for feed in feeds:
        x = feed['images']
        feed['images'] = np.pad(x, ((0, 0), (0, 0), (0, h - x.shape[2]), (0, w - x.shape[3])))
    outside = '|'.join(parts)
    before_pools = sorted(_layers_before(model, OPENVINO_FLOAT_BEFORE))
    ignored = nncf.IgnoredScope(names=before_pools, validate=False, patterns=(
        [f'^(?!/({outside})/).*'] + [f'.*/{scope}(_[0-9]+)?/.*' for scope in OPENVINO_FLOAT_SCOPES]))
    logger(f'[int8] NNCF: calibrating {", ".join(parts)} on {len(feeds)} images ({h}x{w}, padded)')
    quantized = nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds), model_type=nncf.ModelType.TRANSFORMER,
                              preset=nncf.QuantizationPreset.PERFORMANCE, ignored_scope=ignored)
    folder = osp.dirname(osp.abspath(out))
    os.makedirs(folder, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=folder, prefix='.nncf-')
    try:   # written whole or not at all: both files moved in once saved
        ov.save_model(quantized, osp.join(tmp, 'model.xml'))
        shutil.move(osp.join(tmp, 'model.bin'), out[:-4] + '.bin')
        shutil.move(osp.join(tmp, 'model.xml'), out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fake_quantize = sum(op.get_type_name() == 'FakeQuantize' for op in quantized.get_ops())
    logger(f'[int8] wrote {out} (+ .bin): {fake_quantize} FakeQuantize nodes')
    return dict(path=out, fake_quantize_nodes=fake_quantize, calibration_images=len(feeds), calibration_hw=[h, w],
                parts=list(parts), float_scopes=list(OPENVINO_FLOAT_SCOPES), float_before_pools=before_pools)


__all__ = ['CALIBRATION_METHODS', 'DEFAULT_PARTS', 'OPENVINO_FLOAT_BEFORE', 'OPENVINO_FLOAT_SCOPES', 'QUANTIZED_OPS',
           'calibration_inputs', 'float_compute_nodes', 'quantize_graph', 'quantize_with_openvino']
