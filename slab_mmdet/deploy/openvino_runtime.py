"""Running an exported ONNX graph in OpenVINO's CPU plugin (the optional ``openvino`` extra:
``make setup-openvino``): the graph read from the ``.onnx`` file the exporter wrote (or an
OpenVINO IR made from it), compiled for latency at batch 1, outputs in the graph's order as
ONNX Runtime gives them; and its int8 version by OpenVINO's own post-training quantisation
(NNCF)."""
import os
import os.path as osp
import shutil
import tempfile

import numpy as np

from .graph import graph_inputs, read_graph
from .quantize import DEFAULT_PARTS, calibration_inputs

# OpenVINO's CPU plugin runs bf16 by default on CPUs with AMX or AVX-512 BF16: f32 unless asked,
# so that its outputs can be checked against ONNX Runtime's at the exporter's tolerance.
PRECISIONS = ('f32', 'bf16')
INSTALL_HINT = 'install it with `make setup-openvino` (pins in requirements/openvino.lock)'


def import_nncf():
    """The ``nncf`` module (OpenVINO's quantisation, part of the extra), or an ImportError that
    says how to install it."""
    try:
        import nncf
    except ImportError as e:
        raise ImportError(f'NNCF is not installed (part of the optional OpenVINO extra): {INSTALL_HINT}') from e
    return nncf


def import_openvino():
    """The ``openvino`` module, or an ImportError that says how to install the extra."""
    try:
        import openvino
    except ImportError as e:
        raise ImportError(f'OpenVINO is not installed (an optional extra of slab-mmdet): {INSTALL_HINT}') from e
    return openvino


class OpenVinoGraph:
    """An ONNX graph compiled by OpenVINO for the CPU: ``run(feed)`` -> list of numpy arrays.

    Args:
        path (str): The ``.onnx`` file (read and checked as ONNX Runtime's sessions are).
        threads (int | None): Inference threads; None: OpenVINO's default.
        precision (str): 'f32' (default) or 'bf16' (the plugin's default where the CPU has it).
    """

    def __init__(self, path, threads=None, precision='f32'):
        if precision not in PRECISIONS:
            raise ValueError(f'OpenVINO precision {precision!r}: expected one of {PRECISIONS}')
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f'OpenVINO threads must be an int >= 1 or None, got {threads!r}')
        if not path.endswith('.xml'):   # OpenVINO IR (e.g. from NNCF) is OpenVINO's own to check
            read_graph(path)   # a missing or unreadable file is refused naming it, before OpenVINO reads it
        ov = import_openvino()
        core = ov.Core()
        config = {'PERFORMANCE_HINT': 'LATENCY', 'NUM_STREAMS': 1, 'INFERENCE_PRECISION_HINT': precision}
        if threads:
            config['INFERENCE_NUM_THREADS'] = threads
        self.path, self.precision = path, precision
        self.compiled = core.compile_model(core.read_model(path), 'CPU', config)
        self.request = self.compiled.create_infer_request()
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]

    def run(self, feed):
        """Outputs for ``feed`` ({input name: numpy array}), in the graph's output order (copies:
        the request's buffers are reused by the next run)."""
        missing = set(self.input_names) - set(feed)
        if missing:
            raise ValueError(f'{self.path}: inputs {sorted(missing)} missing from the feed; the graph takes '
                             f'{self.input_names}')
        results = self.request.infer({name: feed[name] for name in self.input_names})
        return [results[port].copy() for port in self.compiled.outputs]


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
    images = list(calibration_images)
    if not images:
        raise ValueError('int8 calibration needs at least one image; give a folder of images (e.g. a few dozen '
                         'of the training set)')
    nncf, ov = import_nncf(), import_openvino()
    feeds = calibration_inputs(config, images, graph_inputs(read_graph(float_path)), cfg_options, logger)
    # NNCF stacks each activation's statistics over the set: one image size for all, the
    # smaller images zero-padded at the bottom/right as mmdet pads a batch.
    h = max(f['images'].shape[2] for f in feeds)
    w = max(f['images'].shape[3] for f in feeds)
    for feed in feeds:
        x = feed['images']
        feed['images'] = np.pad(x, ((0, 0), (0, 0), (0, h - x.shape[2]), (0, w - x.shape[3])))
    outside = '|'.join(parts)
    model = ov.Core().read_model(float_path)
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
