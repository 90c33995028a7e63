"""Small helpers with no dependency on the rest of slab-mmdet (the bottom layer)."""
from .checks import is_int, is_number, parse_hw
from .tracing import exporting_graph

__all__ = ['exporting_graph', 'is_int', 'is_number', 'parse_hw']
