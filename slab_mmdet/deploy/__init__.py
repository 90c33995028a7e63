from .fuse import (compare_detections, compare_features, count_norm_layers, deploy_config, fuse_checkpoint,
                   fuse_detector)
from .fusion import (ChannelAffine, fold_into_next, fold_into_previous, fold_norm, is_foldable_norm, norm_affine,
                     norm_to_channel_affine)

__all__ = ['ChannelAffine', 'compare_detections', 'compare_features', 'count_norm_layers', 'fuse_checkpoint', 'deploy_config', 'fold_into_next', 'fold_into_previous', 'fold_norm',
           'fuse_detector', 'is_foldable_norm', 'norm_affine', 'norm_to_channel_affine']
