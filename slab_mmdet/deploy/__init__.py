"""Detector-level fusion and its equivalence checks.

The fold maths itself lives with the layers (:mod:`slab_mmdet.models.layers.fusion`).
"""
from .fuse import (compare_detections, compare_features, count_norm_layers, deploy_config, fuse_checkpoint,
                   fuse_detector)

__all__ = [
    'compare_detections', 'compare_features', 'count_norm_layers', 'deploy_config', 'fuse_checkpoint',
    'fuse_detector',
]
