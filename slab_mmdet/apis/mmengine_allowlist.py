"""Let checkpoints written by mmengine load with ``torch.load(weights_only=True)``.

torch >= 2.6 loads with ``weights_only=True`` by default, and mmengine 0.10.7's
``torch.load`` calls rely on that default, so resuming, ``load_from`` and ``mim test``
fail on the non-tensor objects mmengine pickles beside the weights. Rather than
turning that safety off, this module allow-lists exactly what mmengine writes:

* the message hub's ``HistoryBuffer`` objects, their numpy arrays and scalars
  (``numpy.ndarray``, ``numpy.dtype``, numpy's array/scalar reconstructors);
* the statistics methods a ``HistoryBuffer`` pickles as ``getattr(HistoryBuffer,
  'mean')`` and the like. ``builtins.getattr`` itself is *not* allowed (it would give
  a pickle access to arbitrary attributes): the name is mapped to a function that
  only returns ``HistoryBuffer``'s own statistics methods and refuses anything else.

Importing :mod:`slab_mmdet` applies this once.
"""
import pickle

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

# The statistics methods a HistoryBuffer registers for itself (in its __init__).
HISTORY_BUFFER_METHODS = frozenset(('min', 'max', 'current', 'mean'))
assert all(callable(getattr(HistoryBuffer, n, None)) for n in HISTORY_BUFFER_METHODS), \
    'mmengine HistoryBuffer no longer has the statistics methods this module expects'



def history_buffer_getattr(obj, name):
    """``getattr`` restricted to ``HistoryBuffer``'s statistics methods."""
    if obj is HistoryBuffer and name in HISTORY_BUFFER_METHODS:
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'checkpoint asks for getattr({obj!r}, {name!r}); with weights_only=True only '
        f'HistoryBuffer.{{{", ".join(sorted(HISTORY_BUFFER_METHODS))}}} may be looked up')


def _numpy_globals():
    """numpy's reconstructors, under both the numpy 1.x and 2.x module names."""
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    entries = [np.ndarray, np.dtype]
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        entries += [(_reconstruct, f'{module}._reconstruct'), (scalar, f'{module}.scalar')]
    # numpy >= 1.25 pickles some dtypes by their class (numpy.dtypes.Float64DType, ...).
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        entries += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith('DType')]
    return entries


# bytes: an empty HistoryBuffer's numpy array pickles its (empty) data as bytes(...); the
# constructor only makes a bytes object.
MMENGINE_CHECKPOINT_GLOBALS = [HistoryBuffer, (history_buffer_getattr, 'builtins.getattr'), bytes] + _numpy_globals()


def register_mmengine_safe_globals():
    """Allow-list the types mmengine writes into checkpoints (idempotent)."""
    torch.serialization.add_safe_globals(MMENGINE_CHECKPOINT_GLOBALS)


register_mmengine_safe_globals()
