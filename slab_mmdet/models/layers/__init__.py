from .attention import SpatialReductionAttention, SpatialReductionLinearAttention, normalised_linear_attention
from .fusion import (ChannelAffine, FusionError, fold_into_next, fold_into_previous, fold_norm, norm_affine,
                     norm_to_channel_affine)
from .prepbn import PRepBN, RepBN, bn_affine, iter_prepbn, repbn_affine, repbn_to_bn_params
from .transformer import Mlp, PatchEmbed, PreNormBlock
from .window_attention import ShiftedWindowAttention, WindowLinearAttention, WindowSoftmaxAttention

__all__ = [
    'ChannelAffine', 'FusionError', 'fold_into_next', 'fold_into_previous', 'fold_norm', 'norm_affine',
    'norm_to_channel_affine',
    'PRepBN', 'RepBN', 'bn_affine', 'iter_prepbn', 'repbn_affine', 'repbn_to_bn_params', 'Mlp', 'PatchEmbed',
    'PreNormBlock', 'SpatialReductionAttention', 'SpatialReductionLinearAttention', 'normalised_linear_attention',
    'ShiftedWindowAttention', 'WindowLinearAttention', 'WindowSoftmaxAttention'
]
