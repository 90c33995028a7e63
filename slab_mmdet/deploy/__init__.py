from .fusion import (ChannelAffine, fold_into_next, fold_into_previous, fold_norm, is_foldable_norm, norm_affine,
                     norm_to_channel_affine)

__all__ = ['ChannelAffine', 'fold_into_next', 'fold_into_previous', 'fold_norm', 'is_foldable_norm', 'norm_affine',
           'norm_to_channel_affine']
