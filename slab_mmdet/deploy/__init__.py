from .convert import (ConversionError, ConversionReport, convert_checkpoint, convert_state_dict,
                      load_checkpoint_safely)
from .fuse import (compare_detections, compare_features, count_norm_layers, deploy_config, fuse_checkpoint,
                   fuse_detector)
from .fusion import (ChannelAffine, fold_into_next, fold_into_previous, fold_norm, is_foldable_norm, norm_affine,
                     norm_to_channel_affine)

__all__ = [
    'ChannelAffine', 'ConversionError', 'ConversionReport', 'compare_detections', 'compare_features',
    'convert_checkpoint', 'convert_state_dict', 'count_norm_layers', 'deploy_config', 'fold_into_next',
    'fold_into_previous', 'fold_norm', 'fuse_checkpoint', 'fuse_detector', 'is_foldable_norm',
    'load_checkpoint_safely', 'norm_affine', 'norm_to_channel_affine',
]
