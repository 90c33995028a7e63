from .attention import SpatialReductionAttention, SpatialReductionLinearAttention, normalised_linear_attention
from .dyt import DyT, ScaledTanh, TanhAffine
from .fusion import FusionError, fold_into_next, fold_into_previous, fold_norm, norm_affine, norm_to_channel_affine
from .norms import (FOLDABLE_NORM_CFG_TYPES, NORM_LAYER_TYPES, TOKEN_NORM_CFG_TYPES, ChannelAffine, deployed_norm,
                    norm_remainder)
from .prepbn import PRepBN, RepBN, bn_affine, iter_prepbn, repbn_affine, repbn_to_bn_params
from .transformer import Mlp, PatchEmbed, PreNormBlock
from .window_attention import ShiftedWindowAttention, WindowLinearAttention, WindowSoftmaxAttention

__all__ = [
    'ChannelAffine', 'DyT', 'FOLDABLE_NORM_CFG_TYPES', 'NORM_LAYER_TYPES', 'ScaledTanh', 'TanhAffine',
    'TOKEN_NORM_CFG_TYPES', 'deployed_norm', 'norm_remainder', 'FusionError', 'fold_into_next',
    'fold_into_previous', 'fold_norm', 'norm_affine',
    'norm_to_channel_affine',
    'PRepBN', 'RepBN', 'bn_affine', 'iter_prepbn', 'repbn_affine', 'repbn_to_bn_params', 'Mlp', 'PatchEmbed',
    'PreNormBlock', 'SpatialReductionAttention', 'SpatialReductionLinearAttention', 'normalised_linear_attention',
    'ShiftedWindowAttention', 'WindowLinearAttention', 'WindowSoftmaxAttention'
]
