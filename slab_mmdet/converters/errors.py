"""The converter's error type and the source families it knows."""

FAMILIES = ('auto', 'reference', 'mmdet')


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message says why and names the keys."""
