from .attention import (SpatialReductionAttention, SpatialReductionLinearAttention, grouped_relu_linear_attention,
                        relu_linear_attention)
from .prepbn import PRepBN, RepBN, bn_affine, iter_prepbn, repbn_affine, repbn_to_bn_params
from .transformer import Mlp, PatchEmbed, PreNormBlock
from .window_attention import ShiftedWindowAttention, WindowLinearAttention, WindowSoftmaxAttention

__all__ = [
    'PRepBN', 'RepBN', 'bn_affine', 'iter_prepbn', 'repbn_affine', 'repbn_to_bn_params', 'Mlp', 'PatchEmbed',
    'PreNormBlock', 'SpatialReductionAttention', 'SpatialReductionLinearAttention', 'relu_linear_attention',
    'grouped_relu_linear_attention', 'ShiftedWindowAttention', 'WindowLinearAttention', 'WindowSoftmaxAttention'
]
