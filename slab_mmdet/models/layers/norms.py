"""The token norms of this code: which exist, which fold away at deployment, and what each
leaves in a fused model where it stood (the one table every other module reads)."""
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from ...utils import is_number
from .dyt import DyT, ScaledTanh, TanhAffine
from .prepbn import PRepBN, RepBN

# ``norm_cfg`` types that normalise channel-last (B, N, C) tokens (mmcv's 'BN' is a BatchNorm2d,
# 'GN'/'IN' normalise other dimensions).
TOKEN_NORM_CFG_TYPES = ('PRepBN', 'RepBN', 'DyT', 'LN')
# Those whose affine folds into a neighbouring linear/conv layer, i.e. that ``deploy=True`` builds
# without: PRepBN (at g = 0) and RepBN entirely, DyT all but its tanh.
FOLDABLE_NORM_CFG_TYPES = ('PRepBN', 'RepBN', 'DyT')
# Every normalisation layer a backbone may hold (what fusion counts and removes).
NORM_LAYER_TYPES = (PRepBN, RepBN, DyT, _BatchNorm, nn.LayerNorm, nn.GroupNorm)


class ChannelAffine(nn.Module):
    """A fixed per-channel affine ``x * weight + bias`` over the last dimension.

    What a folded norm leaves behind when no neighbouring layer can absorb it (e.g.
    a backbone output norm whose consumer is not a plain linear/conv layer).
    """

    def __init__(self, num_features):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x):
        return torch.addcmul(self.bias, x, self.weight)


def keeps_a_nonlinearity(norm_cfg):
    """Whether a fused model still computes something of this norm besides an affine (DyT's tanh)."""
    return norm_cfg.get('type') == 'DyT'


def deployed_norm(norm_cfg, num_features, folded=True):
    """What ``deploy=True`` builds in place of a ``norm_cfg`` norm: with its affine ``folded``
    into a neighbouring layer nothing (``nn.Identity``) or DyT's tanh (:class:`ScaledTanh`);
    unfolded a :class:`ChannelAffine`, or DyT's tanh and affine (:class:`TanhAffine`)."""
    if keeps_a_nonlinearity(norm_cfg):
        return ScaledTanh() if folded else TanhAffine(num_features)
    return nn.Identity() if folded else ChannelAffine(num_features)


def norm_remainder(norm, scale_shift=None):
    """The module that replaces ``norm`` once fused: as :func:`deployed_norm`, with ``norm``'s
    values. ``scale_shift``: the ``(scale, shift)`` of its affine when that stays (not folded)."""
    if isinstance(norm, (DyT, TanhAffine)):
        return ScaledTanh.of(norm) if scale_shift is None else TanhAffine.of(norm)
    if scale_shift is None:
        return nn.Identity()
    scale, shift = scale_shift
    affine = ChannelAffine(scale.numel()).to(scale)
    with torch.no_grad():
        affine.weight.copy_(scale)
        affine.bias.copy_(shift)
    return affine


def check_token_norm_cfg(norm_cfg, owner, what='norm_cfg'):
    """Refuse a norm that cannot normalise channel-last (B, N, C) tokens (mmcv's 'BN' is a
    BatchNorm2d, 'GN'/'IN' normalise other dimensions), naming the valid types."""
    if not isinstance(norm_cfg, dict):
        raise ValueError(f"{owner}: {what} must be a dict such as dict(type='PRepBN'), got {norm_cfg!r} "
                         f"({type(norm_cfg).__name__}); valid types: {', '.join(TOKEN_NORM_CFG_TYPES)}")
    kind = norm_cfg.get('type')
    if kind not in TOKEN_NORM_CFG_TYPES:
        raise ValueError(f'{owner}: {what} type {kind!r} cannot normalise the (B, N, C) tokens of a transformer; '
                         f"use one of {', '.join(TOKEN_NORM_CFG_TYPES)} (PRepBN/RepBN are the BatchNorms that do, "
                         f'DyT needs no statistics; '
                         f'for SyncBN, build PRepBN and convert its BatchNorms with '
                         f'torch.nn.SyncBatchNorm.convert_sync_batchnorm)')
    eps = norm_cfg.get('eps')
    if eps is not None and (not is_number(eps) or not eps > 0):
        raise ValueError(f'{owner}: {what} eps must be a number > 0 (it keeps the normaliser away from 0), '
                         f'got {eps!r}')
