"""A config + checkpoint exported as an ONNX graph and checked before it is kept: the model
made deployable (fused where it folds), the graph written (backbone + neck, or the whole
detector), its normalisation nodes accounted for by name, and ONNX Runtime compared with
PyTorch at several sizes. What ``tools/export_onnx.py`` runs; a failed check leaves no file."""
import os
import os.path as osp

import torch

from .. import apis
from ..models.layers.fusion import FusionError
from ..models.layers.norms import NORM_LAYER_TYPES
from ..models.layers.prepbn import PRepBN, RepBN
from .fuse import compare_detections, detections_equivalent, fuse_detector


class ExportCheckFailed(ValueError):
    """The exported graph failed a check (a norm left, ONNX Runtime differs from PyTorch)."""


def deployable_detector(config, checkpoint, cfg_options=None, logger=print):
    """The detector of ``config`` + ``checkpoint`` as it deploys, on the CPU in eval mode:
    ``(model, kept, layernorm_model)``, with ``kept`` the names of the backbone's norm
    layers that stay and ``layernorm_model`` whether it had nothing to fold.

    * a deploy config (backbone ``deploy=True``, from ``tools/fuse_norms.py``) with its fused
      checkpoint: as is;
    * a model with PRepBN/RepBN norms: fused (every PRepBN must have reached g = 0); the
      LayerNorm output norms of the authors' recipe (``out_norm_cfg`` LN) stay;
    * a model with no foldable norm (a LayerNorm baseline): as is, every norm stays.

    Raises:
        FusionError: a SLAB model still annealing (g > 0), or otherwise not foldable.
        CheckpointMismatch: the checkpoint does not fit the config.
    """
    logger = logger or (lambda message: None)
    model = apis.load_detector(config, checkpoint, cfg_options, strict=True)
    backbone = model.backbone
    layernorm_model = False
    if getattr(backbone, 'deploy', False):
        logger(f'[export] {type(backbone).__name__} is already fused (deploy config)')
    elif any(isinstance(m, (PRepBN, RepBN)) for m in backbone.modules()):
        try:
            report = fuse_detector(model)
        except FusionError as e:
            raise FusionError(f'cannot export {checkpoint} with {config}: the model cannot be fused ({e}). '
                              'Export a model trained until g = 0 (PRepBNHook), or a fused checkpoint with its '
                              'deploy config from tools/fuse_norms.py') from e
        logger(f'[export] fused: removed {report["removed_norms"]} norm layers; output norms '
               f'{report["output_norms"]}')
    else:
        layernorm_model = True
        logger(f'[export] {type(backbone).__name__} has no foldable norm (a LayerNorm model): exported with its '
               f'norms')
    kept = [f'backbone.{name}' for name, m in backbone.named_modules() if isinstance(m, NORM_LAYER_TYPES)]
    return model, _outermost(kept), layernorm_model


def _outermost(names):
    """The names that are not inside another one of ``names`` (a PRepBN, not also its LN)."""
    return [n for n in names if not any(n != o and n.startswith(o + '.') for o in names)]


def norm_nodes_outside(onnx_model, allowed_modules):
    """``(node name, op type)`` of the graph's normalisation nodes that do not belong to one of
    ``allowed_modules`` (module names such as ``backbone.norm0``; the exporter names nodes by
    module scope, ``/backbone/norm0/...``)."""
    from .onnx_export import NORM_OPS
    scopes = tuple('/' + name.replace('.', '/') + '/' for name in allowed_modules)
    nodes = list(onnx_model.graph.node)
    for function in onnx_model.functions:
        nodes.extend(function.node)
    return [(n.name, n.op_type) for n in nodes if n.op_type in NORM_OPS and not n.name.startswith(scopes)]


def check_inputs(model, sizes, seed=0):
    """What the exported graph is checked on: the config's first test image through its test
    pipeline (when the dataset can be read), then a random image of each size in ``sizes``.
    Returns ``[(images, image_shape (h, w))]``."""
    inputs = []
    try:
        data = apis.detector_inputs(model, apis.inference_pipeline(model.cfg), apis.first_test_image(model.cfg))
        inputs.append((data['inputs'], tuple(data['data_samples'][0].img_shape)))
    except (FileNotFoundError, KeyError, AttributeError):
        pass   # no readable test set: random images only
    gen = torch.Generator().manual_seed(seed)
    inputs += [(torch.randn(1, 3, h, w, generator=gen), (h, w)) for h, w in sizes]
    return inputs


def check_detector_graph(graph_module, path, inputs, tolerance, logger=print):
    """ONNX Runtime against PyTorch (the same :class:`DetectorGraph`) on each of ``inputs``
    (:func:`check_inputs`): the same number of detections with the same labels, boxes within
    ``tolerance`` of the image's longer side, scores and masks within ``tolerance``.
    Returns ``{(H, W): diff}``."""
    from .onnx_detector import OnnxDetector
    runner = OnnxDetector(path)
    diffs = {}
    for image, image_hw in inputs:
        h, w = image.shape[-2:]
        with torch.no_grad():
            want = graph_module(image, torch.tensor(image_hw))
        got = runner.run(image.numpy(), image_hw)
        diff = compare_detections(_instances(want, graph_module.output_names),
                                  _instances([torch.from_numpy(got[k]) for k in graph_module.output_names],
                                             graph_module.output_names), (h, w), score_tolerance=tolerance)
        diffs[(h, w)] = diff
        logger(f'[export] ONNX Runtime vs PyTorch at {h}x{w}: {diff["count"][0]} detections; {diff}')
        if not detections_equivalent(diff, tolerance):
            raise ExportCheckFailed(f'ONNX Runtime differs from PyTorch at {h}x{w}: {diff} (tolerance {tolerance})')
    return diffs


def _instances(outputs, names):
    from mmengine.structures import InstanceData
    values = dict(zip(names, outputs))
    instances = InstanceData(bboxes=values['boxes'], scores=values['scores'], labels=values['labels'])
    if 'masks' in values:
        instances.masks = values['masks'] >= 0.5
    return instances


def export_checked(config, checkpoint, out, detector=False, input_hw=(800, 1216), check_sizes=(), tolerance=1e-4,
                   opset=18, static=False, with_rpn_head=False, cfg_options=None, logger=print):
    """Export ``config`` + ``checkpoint`` to ``out`` and check it; see the module docstring.

    ``detector``: the whole detector (:func:`~.detector_graph.export_detector_onnx`) instead of
    backbone + neck (:func:`~.onnx_export.export_features_onnx`). The graph is written to a
    temporary file and moved to ``out`` only when every check passed. Returns a dict with
    the export's info, the differences measured and ``kept_norms`` (the norm nodes left,
    by name: the LayerNorm output norms of the authors' recipe, or a LayerNorm baseline's).

    Raises FusionError, CheckpointMismatch, UnsupportedDetector, ExportCheckFailed, ValueError.
    """
    import onnx

    from .detector_graph import DetectorGraph, export_detector_onnx
    from .onnx_export import check_onnx_features, export_features_onnx
    if osp.isdir(out):
        raise IsADirectoryError(f'--out {out} is a directory; give a .onnx file name')
    tmp = f'{out}.tmp{os.getpid()}.onnx'
    inner_logger = logger
    logger = (lambda message: inner_logger(message.replace(tmp, out))) if logger else (lambda message: None)
    model, kept, layernorm_model = deployable_detector(config, checkpoint, cfg_options, logger)
    try:
        if detector:
            info = export_detector_onnx(model, tmp, input_hw=input_hw, opset=opset, static=static, logger=logger)
        else:
            info = export_features_onnx(model, tmp, input_hw=input_hw, opset=opset, dynamic=not static,
                                        with_rpn_head=with_rpn_head, logger=logger)
        # A fused model may keep only the LayerNorm output norms of the authors' recipe (checked
        # by name); a LayerNorm baseline keeps its norms wherever they are.
        stray = [] if layernorm_model else norm_nodes_outside(onnx.load(tmp), kept)
        if stray:
            raise ExportCheckFailed(f'the exported graph holds {len(stray)} normalisation nodes outside the norms '
                                    f'meant to stay ({kept or "none"}), e.g. {stray[:3]}: the model was not fully '
                                    f'fused')
        if kept:
            logger(f'[export] norms kept in the graph: {", ".join(kept[:8])}{" ..." if len(kept) > 8 else ""} '
                   f'({len(kept)}: ' + ('a LayerNorm model)' if layernorm_model
                                        else 'the LayerNorm output norms of out_norm_cfg, as meant)'))
        sizes = [tuple(input_hw)] + ([] if static else [tuple(s) for s in check_sizes if tuple(s) != tuple(input_hw)])
        try:
            if detector:
                inputs = check_inputs(model, sizes) if not static else check_inputs(model, sizes)[-1:]
                diffs = check_detector_graph(DetectorGraph(model).eval(), tmp, inputs, tolerance, logger)
            else:
                diffs = check_onnx_features(model, tmp, sizes, with_rpn_head=with_rpn_head)
                for (h, w), diff in diffs.items():
                    logger(f'[export] ONNX Runtime vs PyTorch at {h}x{w}: largest relative difference {diff:.2e}')
                worst = max(diffs.values())
                if worst > tolerance:
                    raise ExportCheckFailed(f'ONNX Runtime differs from PyTorch by {worst:.2e} > tolerance '
                                            f'{tolerance}')
        except Exception as e:   # an ONNX Runtime failure at another size: the trace kept the example's sizes
            if isinstance(e, (ExportCheckFailed, FusionError)) or static:
                raise
            raise ExportCheckFailed(f'the graph does not run at every size ({type(e).__name__}: {str(e)[:300]}): '
                                    f'the model\'s trace keeps sizes of the example input (mmdet\'s '
                                    f'PyramidVisionTransformer does, in nn.MultiheadAttention); export it with '
                                    f'--static (a fixed input size)') from e
        os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
        os.replace(tmp, out)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    info['path'] = out
    return dict(info, diffs=diffs, kept_norms=kept)


__all__ = ['ExportCheckFailed', 'check_detector_graph', 'deployable_detector', 'export_checked',
           'norm_nodes_outside']
