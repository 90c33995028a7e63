"""Fusing a whole detector: every norm of its backbone folds into a neighbour.

:func:`fuse_detector` calls the backbone's ``switch_to_deploy()`` (pre-norms into
the following projections, post-norms into the patch-embedding convs) and, when the
neck reads each backbone output only through a 1x1 lateral conv (FPN and PAFPN
without ``add_extra_convs='on_input'``, as in Mask R-CNN), folds the output norms
into those lateral convs too; otherwise they stay as one fixed per-channel
:class:`ChannelAffine` each. :func:`deploy_config` writes the matching config
(``deploy=True``), into which the fused weights load strictly.
"""
import copy

import torch.nn as nn
from mmengine.config import Config
from torch.nn.modules.batchnorm import _BatchNorm

from ..models.layers.prepbn import PRepBN, RepBN
from .fusion import fold_into_next, norm_affine

NORM_TYPES = (PRepBN, RepBN, _BatchNorm, nn.LayerNorm, nn.GroupNorm)


def count_norm_layers(module):
    """Norm layers in ``module``; a PRepBN counts once (not also its LayerNorm/RepBN inside)."""
    count, skip = 0, set()
    for m in module.modules():
        if id(m) in skip:
            continue
        if isinstance(m, NORM_TYPES):
            count += 1
            skip.update(id(s) for s in m.modules())
    return count


def _lateral_convs_for_outputs(neck, num_outputs):
    """{backbone output index: lateral 1x1 conv} if the neck reads every backbone output
    only through such a conv; None otherwise."""
    from mmdet.models.necks import FPN, PAFPN
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
        ``output_norms`` ('folded into neck' or 'kept as ChannelAffine'),
        ``out_norms_folded`` (bool, the backbone's deploy-config flag).

    Raises:
        TypeError: the backbone cannot be re-parameterised.
        ValueError: a PRepBN is still annealing (g > 0) or a norm is a LayerNorm; the
            model is left unchanged.
    """
    backbone = getattr(model, 'backbone', None)
    if backbone is None or not hasattr(backbone, 'switch_to_deploy'):
        raise TypeError(f'fuse_detector: {type(model).__name__}.backbone '
                        f'({type(backbone).__name__}) has no switch_to_deploy(); only the SLAB backbones '
                        f'(SLABPyramidVisionTransformer, SLABSwinTransformer) can be fused')
    if getattr(backbone, 'deploy', False):
        raise ValueError('fuse_detector: the backbone is already fused (deploy=True)')
    before = count_norm_layers(backbone)
    backbone.switch_to_deploy()
    folded = False
    convs = _lateral_convs_for_outputs(getattr(model, 'neck', None), len(backbone.out_indices)) \
        if fold_output_norms and getattr(model, 'with_neck', False) else None
    if convs is not None:
        for k, stage in enumerate(backbone.out_indices):
            affine = getattr(backbone, f'norm{stage}')
            scale, shift = norm_affine(affine, f'backbone.norm{stage}')
            fold_into_next(convs[k], scale, shift, f'neck.lateral_convs[{k}]')
            setattr(backbone, f'norm{stage}', nn.Identity())
        backbone.out_norms_folded = folded = True
    assert not any(isinstance(m, NORM_TYPES) for m in backbone.modules()), 'a norm layer survived fusion'
    return dict(removed_norms=before, out_norms_folded=folded,
                output_norms='folded into neck' if folded else 'kept as ChannelAffine')


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


__all__ = ['count_norm_layers', 'deploy_config', 'fuse_detector']
