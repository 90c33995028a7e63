"""A config + checkpoint exported as an ONNX graph and checked before it is kept: the model
made deployable (:func:`~.fuse.deployable_detector`: fused where it folds), the graph written
(:func:`~.onnx_export.export_onnx`: backbone + neck, or the whole detector), its normalisation
nodes accounted for by name, and ONNX Runtime compared with PyTorch at several sizes. What
``tools/export_onnx.py`` runs; a failed check leaves no file."""
import os.path as osp

from .equivalence import check_images, detections_equivalent, onnx_detection_differences, onnx_feature_differences
from .fuse import deployable_detector
from .graph import RUN_ERRORS, norm_nodes_outside, onnx_session
from .onnx_detector import OnnxDetector
from .onnx_export import export_onnx


class ExportCheckFailed(ValueError):
    """The exported graph failed a check (a norm left, ONNX Runtime differs from PyTorch)."""


def _check_graph(model, kept, layernorm_model, sizes, detector, static, tolerance, logger):
    """The checks of :func:`export_checked` as ``export_onnx``'s ``check(path, proto, module)``:
    returns the differences measured, ``{(H, W): diff}``."""

    def check(path, proto, module):
        # A fused model may keep only the LayerNorm output norms of the authors' recipe (checked
        # by name); a LayerNorm baseline keeps its norms wherever they are.
        stray = [] if layernorm_model else norm_nodes_outside(proto, kept)
        if stray:
            raise ExportCheckFailed(f'the exported graph holds {len(stray)} normalisation nodes outside the norms '
                                    f'meant to stay ({kept or "none"}), e.g. {stray[:3]}: the model was not fully '
                                    f'fused')
        if kept:
            logger(f'[export] norms kept in the graph: {", ".join(kept[:8])}{" ..." if len(kept) > 8 else ""} '
                   f'({len(kept)}: ' + ('a LayerNorm model)' if layernorm_model
                                        else 'the LayerNorm output norms of out_norm_cfg, as meant)'))
        if detector:
            images = check_images(model, sizes)
            images = images[-1:] if static else images   # a fixed-size graph: the random image of that size
            diffs = onnx_detection_differences(module, OnnxDetector(path), images, tolerance, logger)
            for (h, w), diff in diffs.items():
                if not detections_equivalent(diff, tolerance):
                    raise ExportCheckFailed(f'ONNX Runtime differs from PyTorch at {h}x{w}: {diff} (tolerance '
                                            f'{tolerance})')
            return diffs
        diffs = onnx_feature_differences(module, onnx_session(path), sizes)
        for (h, w), diff in diffs.items():
            logger(f'[export] ONNX Runtime vs PyTorch at {h}x{w}: largest relative difference {diff:.2e}')
        worst = max(diffs.values())
        if worst > tolerance:
            raise ExportCheckFailed(f'ONNX Runtime differs from PyTorch by {worst:.2e} > tolerance {tolerance}')
        return diffs

    return check


def export_checked(config, checkpoint, out, detector=False, input_hw=(800, 1216), check_sizes=(), tolerance=1e-4,
                   opset=18, static=False, with_rpn_head=False, cfg_options=None, logger=print, exporter='torchscript'):
    """Export ``config`` + ``checkpoint`` to ``out`` and check it; see the module docstring.

    ``detector``: the whole detector instead of backbone + neck; ``exporter``: 'torchscript' or
    'dynamo' (backbone + neck; see :func:`~.onnx_export.export_onnx`). The graph is written to a
    temporary file and moved to ``out`` only when every check passed: a static graph is
    checked at ``input_hw`` (and, for a detector, nothing else), a dynamic one also at each of
    ``check_sizes`` (a detector first on the config's first test image, when it can be read).
    Returns :func:`~.onnx_export.export_onnx`'s dict with the differences measured (``diffs``)
    and ``kept_norms`` (the norm nodes left, by name: the LayerNorm output norms of the
    authors' recipe, or a LayerNorm baseline's).

    Raises FusionError, CheckpointMismatch, UnsupportedDetector, ExportCheckFailed, ValueError.
    """
    if osp.isdir(out):
        raise IsADirectoryError(f'--out {out} is a directory; give a .onnx file name')
    logger = logger or (lambda message: None)
    model, kept, layernorm_model = deployable_detector(config, checkpoint, cfg_options, logger)
    sizes = [tuple(input_hw)] + ([] if static else [tuple(s) for s in check_sizes if tuple(s) != tuple(input_hw)])
    check = _check_graph(model, kept, layernorm_model, sizes, detector, static, tolerance, logger)
    try:
        info = export_onnx(model, out, detector=detector, with_rpn_head=with_rpn_head, input_hw=input_hw,
                           opset=opset, static=static, check=check, logger=logger, exporter=exporter)
    except RUN_ERRORS as e:   # ONNX Runtime failed at another size: the trace kept the example's sizes
        if static:
            raise
        raise ExportCheckFailed(f'the graph does not run at every size ({type(e).__name__}: {str(e)[:300]}): '
                                f'the model\'s trace keeps sizes of the example input (mmdet\'s '
                                f'PyramidVisionTransformer does, in nn.MultiheadAttention); export it with '
                                f'--static (a fixed input size)') from e
    return dict(info, diffs=info.pop('check'), kept_norms=kept)


__all__ = ['ExportCheckFailed', 'export_checked']
