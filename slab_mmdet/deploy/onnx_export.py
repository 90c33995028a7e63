"""Writing a detector as an ONNX graph, the one way: backbone + neck (optionally with the RPN
head's raw outputs) or the whole detector (:class:`~.detector_graph.DetectorGraph`), dynamic or
fixed in height and width, traced in memory and written once, atomically, after an optional
check of the written file."""
import io
import json

import onnx
import torch
import torch.nn as nn

from .. import apis
from ..utils import is_int
from .detector_graph import DETECTOR_INPUTS, DetectorGraph, graph_metadata

DEFAULT_OPSET = 18
# RoiAlign with half_pixel coordinates (mmcv's aligned=True) needs opset 16.
MIN_DETECTOR_OPSET = 16
# Inputs reach the backbone padded to multiples of 32 by mmdet's data preprocessor.
SIZE_DIVISOR = 32
# The TorchScript-based exporter (torch.onnx.export(..., dynamo=False)) and torch's dynamo
# exporter (torch.export -> ONNX; backbone + neck only).
EXPORTERS = ('torchscript', 'dynamo')
# The largest input side a dynamo graph is declared for (torch.export needs a bound).
DYNAMO_MAX_SIDE = 8192


class FeatureExtractor(nn.Module):
    """A detector's ``extract_feat`` as a module: images (B, 3, H, W) -> the neck's levels,
    followed, with ``with_rpn_head``, by the RPN head's raw outputs (per level: class
    scores, then box deltas; no anchor decoding or NMS)."""

    def __init__(self, detector, with_rpn_head=False):
        super().__init__()
        if with_rpn_head and not getattr(detector, 'with_rpn', False):
            raise ValueError(f'export: {type(detector).__name__} has no RPN head to export')
        self.detector = detector
        self.with_rpn_head = with_rpn_head

    def output_names(self, num_levels):
        names = [f'feat{i}' for i in range(num_levels)]
        if self.with_rpn_head:
            names += [f'rpn_cls{i}' for i in range(num_levels)] + [f'rpn_bbox{i}' for i in range(num_levels)]
        return names

    def forward(self, inputs):
        feats = tuple(self.detector.extract_feat(inputs))
        if not self.with_rpn_head:
            return feats
        cls_scores, bbox_preds = self.detector.rpn_head(feats)
        return feats + tuple(cls_scores) + tuple(bbox_preds)


def min_input_size(model):
    """The smallest input side the detector's backbone takes (SLAB-PVT with large spatial
    reductions needs more than the data preprocessor's 32)."""
    return max(SIZE_DIVISOR, int(getattr(getattr(model, 'backbone', None), 'min_input_size', SIZE_DIVISOR)))


def check_export_size(height, width, minimum=SIZE_DIVISOR):
    """Refuse an example input size that is not an int of at least ``minimum``."""
    for name, value in (('height', height), ('width', width)):
        if not is_int(value) or value < minimum:
            raise ValueError(f'export: the example input {name} must be an int >= {minimum}, got {value!r} '
                             f'({minimum}: the smallest input the backbone takes)')


def _detector_trace(model, height, width, static, minimum):
    """(module, example, input names, output names, dynamic axes, metadata) of the whole detector."""
    graph = DetectorGraph(model).eval()
    example = (torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0)),
               torch.tensor([height, width], dtype=torch.int64))
    axes = {} if static else {'images': {2: 'height', 3: 'width'}}
    axes.update({name: {0: 'detections'} for name in graph.output_names})
    metadata = graph_metadata(model, graph, minimum)
    if static:
        metadata['slab_mmdet.static_input_hw'] = json.dumps([height, width])
    return graph, example, list(DETECTOR_INPUTS), graph.output_names, axes, metadata


def _features_trace(model, height, width, static, with_rpn_head):
    """(module, example, input names, output names, dynamic axes, metadata) of backbone + neck."""
    wrapper = FeatureExtractor(model, with_rpn_head).eval()
    example = (torch.zeros(1, 3, height, width),)
    with torch.no_grad():
        num_outputs = len(wrapper(*example))
    outputs = wrapper.output_names(num_outputs // (3 if with_rpn_head else 1))
    axes = None
    if not static:
        axes = {'images': {2: 'height', 3: 'width'}}
        axes.update({name: {2: f'height_{i}', 3: f'width_{i}'} for i, name in enumerate(outputs)})
    return wrapper, example, ['images'], outputs, axes, {}


def _dynamo_proto(module, example, inputs, outputs, static, minimum, opset):
    """The graph of ``module`` through torch's dynamo exporter; dynamic H and W are declared as
    multiples of SIZE_DIVISOR (as mmdet pads), which lets torch.export reason about the padding."""
    from torch.export import Dim
    dynamic_shapes = None
    if not static:
        low, high = -(-minimum // SIZE_DIVISOR), DYNAMO_MAX_SIDE // SIZE_DIVISOR
        dynamic_shapes = ({2: SIZE_DIVISOR * Dim('height_blocks', min=low, max=high),
                           3: SIZE_DIVISOR * Dim('width_blocks', min=low, max=high)},)
    program = torch.onnx.export(module, example, input_names=inputs, output_names=outputs,
                                dynamic_shapes=dynamic_shapes, opset_version=opset, dynamo=True, verbose=False)
    return program.model_proto


def export_onnx(model, out, detector=False, with_rpn_head=False, input_hw=(800, 1216), opset=DEFAULT_OPSET,
                static=False, check=None, logger=print, exporter='torchscript'):
    """Export ``model`` (an mmdet detector in eval mode; fused, for deployment) as ``out``.

    Args:
        model: the detector.
        out (str): the .onnx file to write (its folder is created).
        detector (bool): the whole detector (:class:`~.detector_graph.DetectorGraph`: inputs
            ``images`` and ``image_shape``, outputs the detections; opset at least 16) instead
            of ``extract_feat`` (backbone + neck: input ``images``, outputs ``feat0``, ... in
            the order of ``extract_feat``). Default: False.
        with_rpn_head (bool): backbone + neck only: also the RPN head's raw outputs
            (``rpn_cls{i}``, ``rpn_bbox{i}`` after the features). Default: False.
        input_hw (tuple[int, int]): the example input's (height, width), traced with batch 1.
        opset (int): ONNX opset. Default: 18.
        static (bool): height and width fixed at ``input_hw`` instead of dynamic.
        check (callable | None): ``check(path, proto, module)`` on the written temporary file
            before it is moved to ``out`` (``module``: the traced module); whatever it raises
            leaves no file at ``out``.
        exporter (str): 'torchscript' (default: ``torch.onnx.export(..., dynamo=False)``) or
            'dynamo' (torch.export -> ONNX; backbone + neck only; a dynamic graph takes
            heights and widths that are multiples of 32, as mmdet pads them).

    Returns:
        dict: ``path``, ``inputs``, ``outputs``, ``opset``, ``static``, ``detector``,
        ``with_rpn_head``, and what ``check`` returned as ``check``.
    """
    height, width = input_hw
    if model.training:
        raise ValueError('export: the model is in training mode; call model.eval() first')
    if detector and with_rpn_head:
        raise ValueError('export: with_rpn_head adds the RPN outputs to a backbone + neck graph; the whole detector '
                         'graph (detector=True) already runs the RPN')
    if exporter not in EXPORTERS:
        raise ValueError(f'export: exporter must be one of {EXPORTERS}, got {exporter!r}')
    if exporter == 'dynamo' and detector:
        raise ValueError("export: the whole detector exports through the 'torchscript' exporter only; the "
                         "'dynamo' exporter writes backbone + neck")
    minimum = min_input_size(model)
    check_export_size(height, width, minimum)
    if exporter == 'dynamo' and not static and (height % SIZE_DIVISOR or width % SIZE_DIVISOR):
        raise ValueError(f'export: a dynamic dynamo graph is traced at a multiple of {SIZE_DIVISOR}, as mmdet pads '
                         f'its inputs; got {height}x{width}')
    if detector:
        opset = max(int(opset), MIN_DETECTOR_OPSET)
        module, example, inputs, outputs, axes, metadata = _detector_trace(model, height, width, static, minimum)
    else:
        module, example, inputs, outputs, axes, metadata = _features_trace(model, height, width, static,
                                                                           with_rpn_head)
    with torch.no_grad():
        if exporter == 'dynamo':
            proto = _dynamo_proto(module, example, inputs, outputs, static, minimum, opset)
        else:
            buffer = io.BytesIO()
            torch.onnx.export(module, example, buffer, input_names=inputs, output_names=outputs,
                              dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)
            proto = onnx.load_from_string(buffer.getvalue())
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    checked = None
    with apis.atomic_output(out, suffix='.onnx') as tmp:
        onnx.save(proto, tmp)
        if check is not None:
            checked = check(tmp, proto, module)
    size = f'{height}x{width}' if static else 'HxW'
    what = (f'the whole detector: inputs images 1x3x{size} and image_shape, outputs {", ".join(outputs)}' if detector
            else f'input images 1x3x{size}, {len(outputs)} outputs')
    logger(f'[export] wrote {out} (opset {opset}, {exporter} exporter, {what})')
    return dict(path=out, inputs=inputs, outputs=outputs, opset=opset, static=static, detector=detector,
                with_rpn_head=with_rpn_head, exporter=exporter, check=checked)


__all__ = ['DEFAULT_OPSET', 'EXPORTERS', 'FeatureExtractor', 'check_export_size', 'export_onnx', 'min_input_size']
