"""The detectors a benchmark compares: configs resolved and loaded, weights, fused variants,
and the test pipeline that turns an image file into model inputs."""
import copy
import os.path as osp
from dataclasses import dataclass, field
from typing import Optional

import torch
from mmcv.transforms import Compose
from mmengine.config import Config
from torch import nn

from .. import apis
from ..models.layers.fusion import FusionError
from .errors import BenchmarkError, FusionRefused

FUSE_MODES = ('none', 'yes', 'both')
FUSED_SUFFIX = ' (fused)'
# torch.compile modes offered (inductor; 'max-autotune-no-cudagraphs' also searches kernels)
# and the parts compiled: the feature extractor, whose code is what SLAB changes. The heads
# stay eager (mmcv ops, data-dependent proposal counts: graph breaks, nothing to compare).
COMPILE_MODES = ('default', 'max-autotune-no-cudagraphs')
COMPILED_PARTS = ('backbone', 'neck')
# How compiled code treats a new input size: 'automatic' is torch's (the second size makes H
# and W symbolic: one graph for all sizes), 'static' compiles one graph per size
# (``dynamic=False``; for code whose size arithmetic inductor cannot take symbolically).
COMPILE_SHAPES = ('automatic', 'static')
COMPILED_SUFFIX = ' (compiled)'
# cfg_options that make a two-stage detector keep its 100 best detections whatever their
# scores, so that models compared with random (or differently trained) weights do the same
# RoI/mask-head work.
FIXED_DETECTIONS = dict(model=dict(test_cfg=dict(rcnn=dict(score_thr=0.0, max_per_img=100))))
COCO_TEST_SCALE = (1333, 800)   # mmdet's COCO test Resize (keep ratio)


@dataclass
class BenchModel:
    """One model variant in a benchmark: the detector, its test pipeline and where it came from."""
    name: str
    config: str
    model: nn.Module
    pipeline: Compose
    checkpoint: Optional[str] = None
    fused: bool = False
    fuse_info: Optional[dict] = field(default=None)
    compiled: Optional[str] = None   # the torch.compile mode of its backbone and neck

    def prepare(self, img_path, img_id=0):
        """The untimed part of one inference: test pipeline, collation and data_preprocessor
        (:func:`slab_mmdet.apis.detector_inputs`), on the model's device."""
        return apis.detector_inputs(self.model, self.pipeline, img_path, img_id)

    def padded_input_hw(self, img_path):
        """(H, W) of the batch-1 input this model sees for ``img_path``, padded as its data preprocessor pads."""
        return tuple(self.prepare(img_path)['inputs'].shape[-2:])


def resolve_config_path(config):
    """The file of `config` (a path or ``package::path``); BenchmarkError if there is none."""
    try:
        return apis.resolve_config_path(config)
    except FileNotFoundError as e:
        raise BenchmarkError(str(e)) from None


def load_config(config, cfg_options=None):
    """Load a config (path or ``package::path``; a loaded Config is copied) and apply `cfg_options`
    (a dict as from --cfg-options); BenchmarkError for a config file that does not exist."""
    if not isinstance(config, Config):
        resolve_config_path(config)
    return apis.load_config(config, cfg_options)


def resized_test_pipeline_options(config, scale):
    """cfg_options that make ``config``'s (a path or a loaded Config) test pipeline resize to
    ``scale`` = (long, short) edge bound (keep ratio, as mmdet's Resize); (10000, 512) fixes
    the short side at 512."""
    from mmdet.utils import get_test_pipeline_cfg
    cfg = config if isinstance(config, Config) else load_config(config)
    pipeline = copy.deepcopy(get_test_pipeline_cfg(cfg))
    resizes = [step for step in pipeline if apis.transform_name(step) == 'Resize']
    if len(resizes) != 1:
        raise BenchmarkError(f'{cfg.filename}: its test pipeline has {len(resizes)} Resize steps; resizing to '
                             f'{scale[0]}x{scale[1]} needs exactly one')
    resizes[0]['scale'] = tuple(scale)
    return {'test_dataloader.dataset.pipeline': pipeline}


def coco_test_options(config):
    """cfg_options for comparing whole detectors at COCO test size: the test Resize to
    :data:`COCO_TEST_SCALE` and :data:`FIXED_DETECTIONS` (the same head work in every model)."""
    return dict(FIXED_DETECTIONS, **resized_test_pipeline_options(config, COCO_TEST_SCALE))


def finish_random_prepbn(model):
    """Put every PRepBN of a randomly initialised `model` in the state a finished training
    leaves it in; returns how many there were.

    g = 0 (pure RepBN): at g = 1 a PRepBN runs only its LayerNorm, which would time a
    LayerNorm model. And RepBN's alpha = 0: with fresh BN statistics and alpha = 1
    (its initial value), each RepBN doubles the residual stream and random activations
    overflow within a few blocks, so NMS keeps no boxes and the heads do almost no work.
    With alpha = 0 every RepBN is the identity, as in the network with its norms deleted.
    Neither value changes what is computed, only the numbers.
    """
    from slab_mmdet.models.layers import iter_prepbn
    layers = [m for _, m in iter_prepbn(model)]
    with torch.no_grad():
        for m in layers:
            m.set_g(0.0)
            m.repbn.alpha.zero_()
    return len(layers)


def _import_fused_copy():
    try:
        from slab_mmdet.deploy import fused_copy
    except ImportError as e:
        raise BenchmarkError(f'--fuse needs slab_mmdet.deploy.fused_copy, which cannot be imported: {e}') from e
    return fused_copy


def fuse_copy(model, config, fused_copy, device):
    """A fused copy of `model` (same weights, made by deploy's ``fused_copy``), and the fusion report.

    Raises FusionRefused if the fusion refuses the model, BenchmarkError if it returns
    something other than its report.
    """
    try:
        fused, info = fused_copy(model)
    except FusionError as e:   # not a SLAB backbone / not foldable (LayerNorm, still annealing)
        raise FusionRefused(f'cannot fuse the model of {config}: {e}. Benchmark it without --fuse, or with '
                            f'--fuse both (which measures it unfused)') from e
    if not isinstance(info, dict) or 'removed_norms' not in info:
        raise BenchmarkError(f"fused_copy returned the report {info!r} for {config}; expected a dict with "
                             f"'removed_norms'")
    return fused.to(device).eval(), info


def check_compile_mode(mode):
    """Refuse a torch.compile mode this benchmark does not offer (None: no compilation)."""
    if mode is not None and mode not in COMPILE_MODES:
        raise BenchmarkError(f'compile mode {mode!r} is not valid; valid: {", ".join(COMPILE_MODES)}')


def check_compile_shapes(shapes):
    """Refuse a COMPILE_SHAPES value this benchmark does not offer."""
    if shapes not in COMPILE_SHAPES:
        raise BenchmarkError(f'compile shapes {shapes!r} is not valid; valid: {", ".join(COMPILE_SHAPES)}')


def compile_parts(model, mode, shapes='automatic'):
    """Replace ``model``'s backbone and neck (those it has) by their ``torch.compile`` (inductor,
    ``mode``; ``shapes``: see COMPILE_SHAPES), in place; returns the names compiled.
    Compilation happens at the first forward of each new input shape (the benchmark's warm-up)."""
    check_compile_mode(mode)
    check_compile_shapes(shapes)
    options = dict(dynamic=False) if shapes == 'static' else {}
    compiled = []
    for name in COMPILED_PARTS:
        part = getattr(model, name, None)
        if isinstance(part, nn.Module):
            setattr(model, name, torch.compile(part, mode=mode, **options))
            compiled.append(name)
    return compiled


def unique_names(configs):
    """Short, distinct display names: the config file stem, with its folder or a counter when stems repeat."""
    stems = [osp.splitext(osp.basename(c.split('::')[-1]))[0] for c in configs]
    names = []
    for config, stem in zip(configs, stems):
        name = stem
        if stems.count(stem) > 1:
            parent = osp.basename(osp.dirname(config.split('::')[-1]))
            name = f'{parent}/{stem}' if parent else stem
        base, k = name, 2
        while name in names:
            name, k = f'{base} #{k}', k + 1
        names.append(name)
    return names


def check_inputs(configs, checkpoints=(), fuse='none'):
    """Validate configs, checkpoints and fuse mode without loading anything heavy; returns one
    checkpoint (or None) per config."""
    configs, checkpoints = list(configs), list(checkpoints or ())
    if not configs:
        raise BenchmarkError('no config given')
    for config in configs:
        resolve_config_path(config)
    if fuse not in FUSE_MODES:
        raise BenchmarkError(f'fuse mode {fuse!r} is not valid; valid: {", ".join(FUSE_MODES)}')
    if len(checkpoints) > len(configs):
        raise BenchmarkError(f'{len(checkpoints)} checkpoints for {len(configs)} configs; give at most one '
                             f'checkpoint per config, in the order of the configs')
    for ckpt in checkpoints:
        if ckpt and '://' not in ckpt and not osp.isfile(ckpt):
            raise BenchmarkError(f'checkpoint not found: {ckpt!r}')
    return checkpoints + [None] * (len(configs) - len(checkpoints))


def load_models(configs, checkpoints=(), fuse='none', device='cpu', cfg_options=None, log=print, compile_mode=None,
                compile_shapes='automatic'):
    """Load the variants to benchmark, in order: per config, unfused and/or fused as `fuse` says.

    Args:
        configs: config paths (or ``package::path``).
        checkpoints: at most one per config, in the order of the configs (None, or none left:
            random weights).
        fuse: 'none', 'yes' (fused only) or 'both' (unfused, then fused: a copy with the same
            weights, folded by ``slab_mmdet.deploy.fused_copy``). With 'both', a model that
            cannot be fused (e.g. a LayerNorm baseline) is kept unfused only, with a log line;
            with 'yes' it is an error.
        device: where the models live.
        cfg_options: dict merged into every config (as --cfg-options).
        log: prints progress messages (None: quiet).
        compile_mode: None, or a mode of COMPILE_MODES: every variant's backbone and neck
            go through ``torch.compile`` (after fusion), named with COMPILED_SUFFIX.
        compile_shapes: with compile_mode, how new input sizes compile (COMPILE_SHAPES).

    Raises BenchmarkError naming the bad value (unknown config, too many checkpoints, a
    missing checkpoint file, with fuse='yes' a model that cannot be fused).
    """
    log = log or (lambda message: None)
    configs = list(configs)
    checkpoints = check_inputs(configs, checkpoints, fuse)
    check_compile_mode(compile_mode)
    check_compile_shapes(compile_shapes)
    cfgs = [load_config(c, cfg_options) for c in configs]   # all configs checked before any model is built
    fused_copy = _import_fused_copy() if fuse != 'none' else None
    variants = []
    for config, cfg, ckpt, name in zip(configs, cfgs, checkpoints, unique_names(configs)):
        model = apis.load_detector(cfg, ckpt, device=device, strict=False)
        pipeline = apis.inference_pipeline(cfg)
        log(f'[benchmark] loaded {name} from {config} ({"weights: " + ckpt if ckpt else "random weights"})')
        if ckpt is None and finish_random_prepbn(model):
            log(f'[benchmark] {name}: random weights, so every PRepBN is set to g = 0, the state training ends '
                f'in (at g = 1 it would time a LayerNorm model), with RepBN alpha = 0 (finite activations)')
        if fuse in ('none', 'both'):
            variants.append(BenchModel(name, config, model, pipeline, ckpt))
        if fuse in ('yes', 'both'):
            try:
                fused, info = fuse_copy(model, config, fused_copy, device)
            except FusionRefused as e:
                if fuse == 'yes':
                    raise
                # --fuse both compares against baselines that have nothing to fold (LayerNorm
                # models): they run unfused only, and the log says so.
                log(f'[benchmark] {name}: not fused ({e.__cause__}); with --fuse both it is measured unfused only')
                continue
            log(f'[benchmark] fused {name}: removed {info["removed_norms"]} norms')
            variants.append(BenchModel(name + FUSED_SUFFIX, config, fused, pipeline, ckpt, True, info))
    if compile_mode is not None:
        for variant in variants:
            parts = compile_parts(variant.model, compile_mode, compile_shapes)
            variant.name += COMPILED_SUFFIX
            variant.compiled = compile_mode + (', static shapes' if compile_shapes == 'static' else '')
            log(f'[benchmark] {variant.name}: {" and ".join(parts)} through torch.compile (mode {compile_mode!r}, '
                f'{compile_shapes} shapes); compiled at the first forward of each input shape, in the warm-up')
    return variants
