"""Checkpoint conversion: the SLAB authors' and mmdet's released backbones into the state dicts
of our backbones, loaded safely (no code from a checkpoint runs).

Importing :mod:`slab_mmdet` allow-lists what mmengine writes into its checkpoints
(:mod:`slab_mmdet.apis.mmengine_allowlist`), so that they load with ``weights_only=True``.
"""
from .errors import FAMILIES, ConversionError
from .pipeline import (LAYOUTS, convert_checkpoint, convert_mmdet_state_dict, convert_reference_state_dict,
                       convert_state_dict, detect_layout)
from .report import ConversionReport
from .safe_load import ForeignObject, extract_state_dict, foreign_class_of, load_checkpoint_safely

__all__ = [
    'FAMILIES', 'LAYOUTS', 'ConversionError', 'ConversionReport', 'ForeignObject', 'convert_checkpoint',
    'convert_mmdet_state_dict', 'convert_reference_state_dict', 'convert_state_dict', 'detect_layout',
    'extract_state_dict', 'foreign_class_of', 'load_checkpoint_safely',
]
