"""Fusing a whole detector: every norm of its backbone folds into a neighbour; a config +
checkpoint made deployable, or fused into a checkpoint with its deploy config.

:func:`fuse_detector` calls the backbone's ``switch_to_deploy()`` (pre-norms into
the following projections, post-norms into the patch-embedding convs) and, when the
neck reads each backbone output only through a 1x1 lateral conv (FPN and PAFPN
without ``add_extra_convs='on_input'``, as in Mask R-CNN), folds the output norms
into those lateral convs too; otherwise they stay as one fixed per-channel
:class:`ChannelAffine` each. :func:`deploy_config` writes the matching config
(``deploy=True``), into which the fused weights load strictly.
"""
import copy
import os
import os.path as osp

import torch
import torch.nn as nn
from mmdet.apis import inference_detector
from mmdet.models.necks import FPN, PAFPN
from mmengine.config import Config

from .. import apis
from ..models.layers.fusion import FusionError
from ..models.layers.norms import NORM_LAYER_TYPES
from ..models.layers.prepbn import PRepBN, RepBN
from .equivalence import compare_detections, compare_features, detections_equivalent


def count_norm_layers(module):
    """Norm layers in ``module``; a PRepBN counts once (not also its LayerNorm/RepBN inside)."""
    count, skip = 0, set()
    for m in module.modules():
        if id(m) in skip:
            continue
        if isinstance(m, NORM_LAYER_TYPES):
            count += 1
            skip.update(id(s) for s in m.modules())
    return count


def _lateral_convs_for_outputs(neck, num_outputs):
    """{backbone output index: lateral 1x1 conv} if the neck reads every backbone output
    only through such a conv; None otherwise."""
    if type(neck) not in (FPN, PAFPN) or neck.add_extra_convs == 'on_input':
        return None
    if neck.start_level != 0 or neck.backbone_end_level != num_outputs:
        return None  # some outputs are not read at all: keep their affines
    convs = {}
    for i, lateral in enumerate(neck.lateral_convs):
        conv = getattr(lateral, 'conv', lateral)
        if not isinstance(conv, nn.Conv2d) or conv.kernel_size != (1, 1) or conv.padding != (0, 0) \
                or conv.groups != 1:
            return None
        convs[i + neck.start_level] = conv
    return convs


def fuse_detector(model, fold_output_norms=True):
    """Fuse every norm of ``model.backbone`` into neighbouring layers, in place.

    Args:
        model: an mmdet detector whose backbone implements ``switch_to_deploy()``
            (SLABPyramidVisionTransformer, SLABSwinTransformer).
        fold_output_norms (bool): Fold the backbone's output norms into the neck's
            lateral convs where the neck allows it (else keep them as ChannelAffine).

    Returns:
        dict: ``removed_norms`` (norm layers removed from the backbone),
        ``kept_norms`` (norm layers left: the output norms when ``out_norm_cfg`` is
        a LayerNorm, else 0), ``output_norms`` ('folded into neck', 'kept as
        ChannelAffine' or 'kept as LN (out_norm_cfg; not foldable)'),
        ``out_norms_folded`` (bool, the backbone's deploy-config flag).

    Raises:
        FusionError: the backbone cannot be re-parameterised, a PRepBN is still annealing
            (g > 0) or a norm is a LayerNorm; the model is left unchanged.
    """
    backbone = getattr(model, 'backbone', None)
    if backbone is None or not hasattr(backbone, 'switch_to_deploy'):
        raise FusionError(f'fuse_detector: {type(model).__name__}.backbone '
                          f'({type(backbone).__name__}) has no switch_to_deploy(); only the SLAB backbones '
                          f'(SLABPyramidVisionTransformer, SLABSwinTransformer) can be fused')
    if getattr(backbone, 'deploy', False):
        raise FusionError('fuse_detector: the backbone is already fused (deploy=True)')
    before = count_norm_layers(backbone)
    backbone.switch_to_deploy()
    foldable_outputs = backbone.out_norms_foldable
    convs = _lateral_convs_for_outputs(getattr(model, 'neck', None), len(backbone.out_indices)) \
        if fold_output_norms and foldable_outputs and getattr(model, 'with_neck', False) else None
    if convs is not None:
        backbone.fold_output_norms_into([convs[k] for k in range(len(backbone.out_indices))])
    folded = backbone.out_norms_folded
    kept = count_norm_layers(backbone)
    if foldable_outputs:
        assert kept == 0, 'a norm layer survived fusion'
        kept_as = type(getattr(backbone, f'norm{backbone.out_indices[0]}')).__name__
        output_norms = 'folded into neck' if folded else f'kept as {kept_as}'
    else:
        output_norms = f"kept as {backbone.out_norm_cfg['type']} (out_norm_cfg; not foldable)"
    return dict(removed_norms=before - kept, kept_norms=kept, out_norms_folded=folded, output_norms=output_norms)


def fused_copy(model):
    """``(fused, report)``: a deep copy of ``model`` fused by :func:`fuse_detector` and its
    report; ``model`` itself is left as it is (to compare with, or to keep unfused)."""
    fused = copy.deepcopy(model)
    return fused, fuse_detector(fused)


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


def deploy_config(cfg, out_norms_folded):
    """The config that builds the fused structure directly (``deploy=True``), so that
    fused weights load strictly and run with mmdet's own tools.

    The backbone gets ``deploy=True``/``out_norms_folded`` and no pretrained init, and
    the PRepBN annealing hook is dropped (a fused model has no PRepBN left).
    """
    cfg = copy.deepcopy(cfg if isinstance(cfg, Config) else Config(cfg))
    backbone = cfg.model.backbone
    backbone.deploy = True
    backbone.out_norms_folded = bool(out_norms_folded)
    backbone.init_cfg = None
    hooks = [h for h in cfg.get('custom_hooks', []) if h.get('type') != 'PRepBNHook']
    cfg.custom_hooks = hooks
    cfg.load_from = None
    cfg.resume = False
    return cfg


# The heads amplify float-level differences of the features: on an AMD host a fused mini
# SLAB-PVT-T's features differed by 1.6e-6 (relative) and one RoI score by 1.2e-4, 75 times more.
DETECTION_TOLERANCE = 1e-3


def fuse_checkpoint(config, checkpoint, out_dir, image=None, cfg_options=None, tolerance=1e-4,
                    detection_tolerance=DETECTION_TOLERANCE, logger=print):
    """Fuse a trained detector and write the fused checkpoint and its deploy config.

    Loads ``checkpoint`` (strictly) into the detector of ``config``, fuses a copy with
    :func:`fuse_detector`, checks on a real image through the config's test pipeline
    that the features (backbone + neck) agree within ``tolerance`` (relative) and the detections
    within ``detection_tolerance`` (scores, and boxes relative to the image's longer side), writes
    ``<out_dir>/<config>_deploy.py`` and ``<out_dir>/<checkpoint>_fused.pth``, and checks
    that the fused weights load strictly into the deploy config.

    Returns a dict with the paths, the fusion report and the measured differences.
    Raises ValueError if the fused model is not equivalent.
    """
    model = apis.load_detector(config, checkpoint, cfg_options, strict=True)
    cfg, meta = model.cfg, model.checkpoint_meta
    fused, report = fused_copy(model)
    logger(f'[fuse] removed {report["removed_norms"]} norm layers from {type(model.backbone).__name__}; '
           f'output norms {report["output_norms"]}')

    image = image or apis.first_test_image(cfg)
    pipeline = apis.inference_pipeline(cfg)
    with torch.no_grad():
        inputs = apis.detector_inputs(model, pipeline, image)['inputs']   # the same for both: fusion leaves
        feats_a, feats_b = (m.extract_feat(inputs) for m in (model, fused))   # the preprocessor alone
        det_a, det_b = (inference_detector(m, image).pred_instances for m in (model, fused))
    shape = inputs.shape[-2:]
    diff = dict(features=compare_features(feats_a, feats_b),
                detections=compare_detections(det_a, det_b, tuple(shape), score_tolerance=detection_tolerance))
    logger(f'[fuse] checked on {image}: largest difference: features {diff["features"]:.2e} '
           f'(relative), detections {diff["detections"]}')
    if diff['features'] > tolerance or not detections_equivalent(diff['detections'], detection_tolerance):
        raise ValueError(f'fused model is not equivalent within {tolerance} (features) / {detection_tolerance} '
                         f'(detections): {diff}')

    os.makedirs(out_dir, exist_ok=True)
    stem = osp.splitext(osp.basename(config if isinstance(config, str) else 'model.py'))[0]
    deploy_cfg = deploy_config(cfg, report['out_norms_folded'])
    config_path = osp.join(out_dir, f'{stem}_deploy.py')
    deploy_cfg.dump(config_path)
    ckpt_path = osp.join(out_dir, f'{osp.splitext(osp.basename(checkpoint))[0]}_fused.pth')
    meta = dict(meta, fused=dict(report, source_checkpoint=osp.abspath(checkpoint),
                                 source_config=config if isinstance(config, str) else None))
    apis.save_checkpoint(dict(meta=meta, state_dict=fused.state_dict()), ckpt_path)

    # The fused weights must load strictly into the plain deploy config.
    apis.load_detector(config_path, ckpt_path, strict=True)
    logger(f'[fuse] wrote {ckpt_path} and {config_path} (loads strictly)')
    return dict(config=config_path, checkpoint=ckpt_path, report=report, diff=diff, image=image)


__all__ = ['count_norm_layers', 'deploy_config', 'deployable_detector', 'fuse_checkpoint', 'fuse_detector',
           'fused_copy']
