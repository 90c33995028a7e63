"""Checks of argument values: Python's bool is an int, which no count or size should accept."""
import argparse
import math


def is_int(value):
    """``value`` is an int and not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value):
    """``value`` is a finite int or float and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_hw(text, minimum=32):
    """``'HEIGHTxWIDTH'`` (e.g. ``800x1216``) as ``(height, width)``, each >= ``minimum``; an
    ``argparse.ArgumentTypeError`` naming the text otherwise (an argparse ``type=``)."""
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected HEIGHTxWIDTH such as 800x1216, got {text!r}') from None
    if h < minimum or w < minimum:
        raise argparse.ArgumentTypeError(f'height and width must be >= {minimum}, got {text!r}')
    return h, w
