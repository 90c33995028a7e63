"""ONNX export of a fused SLAB detector's backbone + neck, checked in ONNX Runtime.

:func:`export_features_onnx` writes ``model.extract_feat`` (backbone + neck, the part
that fusion changes) as an ONNX graph with dynamic height and width; its outputs are
the neck's levels in the order of ``extract_feat`` (:func:`slab_mmdet.deploy.export.deployable_detector`
gives the model to export, fused where it folds).
:func:`check_onnx_features` runs the file in ONNX Runtime and compares with PyTorch;
:func:`norm_nodes` and :func:`token_by_token_products` read the graph.
"""
import copy
import os
import os.path as osp

import torch
import torch.nn as nn

from ..utils import is_int
from .fuse import compare_features

# ONNX operators that normalise: a fused SLAB backbone must hold none.
NORM_OPS = ('LayerNormalization', 'BatchNormalization', 'InstanceNormalization', 'GroupNormalization',
            'SimplifiedLayerNormalization', 'SkipLayerNormalization')
DEFAULT_OPSET = 18
# Inputs reach the backbone padded to multiples of 32 by mmdet's data preprocessor.
SIZE_DIVISOR = 32


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


def export_features_onnx(model, out, input_hw=(800, 1216), opset=DEFAULT_OPSET, dynamic=True, with_rpn_head=False,
                         logger=print):
    """Export ``model.extract_feat`` (backbone + neck) of a detector to ONNX at ``out``.

    Args:
        model: an mmdet detector in eval mode (fused, for deployment).
        out (str): the .onnx file to write (its folder is created).
        input_hw (tuple[int, int]): the example input's (height, width), traced
            with batch 1.
        opset (int): ONNX opset. Default: 18.
        dynamic (bool): Height and width of input ``images`` (and so of every
            output) are dynamic. Default: True.
        with_rpn_head (bool): Also export the RPN head's raw outputs
            (``rpn_cls{i}``, ``rpn_bbox{i}`` after the features). Default: False.

    Returns:
        dict: ``path``, ``inputs`` (['images']), ``outputs`` (['feat0', ...], the
        order of ``extract_feat``, then the RPN outputs), ``opset``, ``dynamic``.
    """
    height, width = input_hw
    check_export_size(height, width, min_input_size(model))
    if model.training:
        raise ValueError('export: the model is in training mode; call model.eval() first')
    wrapper = FeatureExtractor(model, with_rpn_head).eval()
    example = torch.zeros(1, 3, height, width)
    with torch.no_grad():
        num_outputs = len(wrapper(example))
    outputs = wrapper.output_names(num_outputs // (3 if with_rpn_head else 1))
    axes = {'images': {2: 'height', 3: 'width'}} if dynamic else None
    if dynamic:
        for i, name in enumerate(outputs):
            axes[name] = {2: f'height_{i}', 3: f'width_{i}'}
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(wrapper, (example,), out, input_names=['images'], output_names=outputs,
                          dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)
    logger(f'[export] wrote {out} (opset {opset}, input images 1x3x{"HxW" if dynamic else f"{height}x{width}"}, '
           f'{num_outputs} outputs)')
    return dict(path=out, inputs=['images'], outputs=outputs, opset=opset, dynamic=dynamic,
                with_rpn_head=with_rpn_head)


def onnx_session(path, threads=None):
    """An ONNX Runtime CPU session for ``path`` (``threads`` intra-op threads; None: ORT's default)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not osp.isfile(path):
        raise FileNotFoundError(f'ONNX graph {path!r} does not exist')
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
    unreadable = (ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.Fail, ort_errors.NoModel)
    try:
        return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    except unreadable as e:   # a truncated or corrupt file
        reason = str(e).strip().splitlines()[0].split(' failed:')[-1].strip() if str(e).strip() else ''
        raise ValueError(f'{path} is not a readable ONNX graph ({type(e).__name__}: {reason[:300]}); export it '
                         f'again with tools/export_onnx.py') from None


def check_onnx_features(model, path, sizes, seed=0, session=None, with_rpn_head=False):
    """Largest relative difference (max |a - b| / max |a| per output) between PyTorch's
    outputs (``extract_feat``, and the RPN head's with ``with_rpn_head``) and ONNX
    Runtime's outputs of ``path``, for a random image of each (height, width) in
    ``sizes``: ``{(h, w): difference}``."""
    session = session or onnx_session(path)
    wrapper = FeatureExtractor(model, with_rpn_head).eval()
    gen = torch.Generator().manual_seed(seed)
    result = {}
    for h, w in sizes:
        image = torch.randn(1, 3, h, w, generator=gen)
        with torch.no_grad():
            expected = wrapper(image)
        got = session.run(None, {'images': image.numpy()})
        if len(got) != len(expected):
            raise AssertionError(f'ONNX Runtime gave {len(got)} outputs, PyTorch {len(expected)}')
        result[(h, w)] = compare_features(expected, tuple(torch.from_numpy(g) for g in got))
    return result


def norm_nodes(onnx_model):
    """The op types of the normalisation nodes (``NORM_OPS``) in an ONNX graph (with its
    functions), one entry per node."""
    nodes = list(onnx_model.graph.node)
    for function in onnx_model.functions:
        nodes.extend(function.node)
    return [n.op_type for n in nodes if n.op_type in NORM_OPS]


def token_by_token_products(onnx_model, input_hw, token_counts):
    """MatMul/Einsum/Gemm nodes of an exported graph whose output's last two dims are both
    token counts (``token_counts``: e.g. each SLA stage's number of tokens at
    ``input_hw``): the N x N (or N x N_kv) attention matrix that SLA must never form.

    The shapes are the ones ONNX Runtime actually produces for a (1, 3, *input_hw) input
    (the graph's size arithmetic is not resolved statically), so the check holds for
    dynamic graphs too. Returns ``[(node name, output shape)]``.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort
    probe = copy.deepcopy(onnx_model)
    products = [n for n in probe.graph.node if n.op_type in ('MatMul', 'Einsum', 'Gemm')]
    known = {o.name for o in probe.graph.output}
    for node in products:
        if node.output[0] not in known:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(node.output[0]))
    session = ort.InferenceSession(probe.SerializeToString(), providers=['CPUExecutionProvider'])
    names = [o.name for o in session.get_outputs()]
    values = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, *input_hw), np.float32)})
    shapes = dict(zip(names, (v.shape for v in values)))
    counts = set(token_counts)
    return [(n.name, tuple(shapes[n.output[0]])) for n in products
            if len(shapes[n.output[0]]) >= 2 and shapes[n.output[0]][-1] in counts
            and shapes[n.output[0]][-2] in counts]


__all__ = ['FeatureExtractor', 'NORM_OPS', 'check_onnx_features', 'export_features_onnx',
           'norm_nodes', 'onnx_session', 'token_by_token_products']
