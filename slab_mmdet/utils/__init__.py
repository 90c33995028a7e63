"""Small helpers with no dependency on the rest of slab-mmdet (the bottom layer)."""
from .checks import is_int, is_number, parse_hw

__all__ = ['is_int', 'is_number', 'parse_hw']
