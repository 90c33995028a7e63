"""Load a checkpoint without running any code from it: ``weights_only=True``, with the
classes it pickles that we neither have nor trust read as inert records.

Released checkpoints pickle their training config (a yacs ``CfgNode``) beside the
weights. :func:`load_checkpoint_safely` loads them with ``weights_only=True`` and
without yacs: classes that are not allow-listed are loaded as inert records
(:class:`ForeignObject`); no code from the checkpoint runs.
"""
import os.path as osp
import pickle
import zipfile
from collections import OrderedDict

import torch

from ..apis import mmengine_allowlist  # noqa: F401  (numpy and mmengine types)
from ..apis.checkpoint import globals_named_in, unsafe_checkpoint
from ..models.backbones.checkpoint_fit import state_dict_in
from .errors import ConversionError


class ForeignObject:
    """Stands in, while loading, for a class pickled in a checkpoint that we neither
    have nor trust (e.g. yacs' ``CfgNode``).

    torch's weights-only unpickler fills only exact ``dict`` / ``OrderedDict`` objects
    with items, so constructing a stand-in (the pickle's NEWOBJ, or a REDUCE call)
    gives a plain :class:`collections.OrderedDict`: the pickled items land in it as
    data, the pickled instance state as its attributes, and it is tagged with
    ``foreign_class`` (the pickled class or function name) and ``pickled_args``. The
    foreign class itself is never imported and none of its methods run.

    Subclasses made by :func:`load_checkpoint_safely` carry the name they stand for.
    """
    pickled_name = None

    def __new__(cls, *args, **kwargs):
        record = OrderedDict()
        record.__dict__.update(foreign_class=cls.pickled_name, pickled_args=args)
        return record


def foreign_class_of(obj):
    """The pickled class name an object loaded by :func:`load_checkpoint_safely`
    stands in for, or None for ordinary data."""
    return obj.__dict__.get('foreign_class') if type(obj) is OrderedDict else None


def _stand_in(name):
    return type('ForeignObject', (ForeignObject,), dict(pickled_name=name, __module__=__name__))


def _unpickler_reason(error):
    """The unpickler's own words out of torch's long 'Weights only load failed' text."""
    boilerplate = ('Weights only load failed', 'Please file an issue', 'Check the documentation')
    paragraphs = [p.strip() for p in str(error).split('\n\n') if p.strip()]
    return ' '.join(p for p in paragraphs if not p.startswith(boilerplate)) or str(error)


def load_checkpoint_safely(path):
    """``torch.load(path, map_location='cpu', weights_only=True)``, with foreign classes
    loaded as inert records (see :class:`ForeignObject`).

    Returns ``(obj, foreign)``: the loaded object and the sorted names of the foreign
    globals it pickles. Raises FileNotFoundError for a missing file and
    :class:`ConversionError` for a file that is not a ``torch.save`` checkpoint or
    that pickles objects weights-only loading cannot build even as inert records (a
    ``list`` subclass, a blocked module such as ``os``): the message names them.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint {path!r} does not exist')
    if not zipfile.is_zipfile(path):
        return _load_legacy(path), []
    try:
        foreign = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception as e:  # truncated, torchscript, unknown opcode ...
        raise ConversionError(f'{path} is not a checkpoint written by torch.save: {e}') from e
    try:
        with torch.serialization.safe_globals([(_stand_in(name), name) for name in foreign]):
            obj = torch.load(path, map_location='cpu', weights_only=True)
    except (pickle.UnpicklingError, AttributeError, TypeError, ValueError, RuntimeError) as e:
        # The wording of every route that refuses such a file (apis.checkpoint), as the converter's error.
        raise ConversionError(str(unsafe_checkpoint(path, globals_named_in(e) or foreign))) from None
    return obj, foreign


def _load_legacy(path):
    """A file in torch.save's legacy (pre-1.6, non-zip) format, or none at all: weights-only
    loading without stand-ins (the legacy format cannot be scanned for its globals first)."""
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except (pickle.UnpicklingError, AttributeError, TypeError, ValueError, RuntimeError, EOFError) as e:
        raise ConversionError(
            f"{path} is not a zip checkpoint (torch.save's default since torch 1.6): either the legacy format "
            f'(_use_new_zipfile_serialization=False) that pickles objects weights-only loading does not allow '
            f'({_unpickler_reason(e)}), or not a torch.save file at all. No code from it was run. Where the file is '
            f'trusted and its classes are installed, save the weights alone with a current torch: '
            f'torch.save(model.state_dict(), path).') from e


def extract_state_dict(ckpt):
    """The weights in a checkpoint (:func:`~slab_mmdet.models.backbones.checkpoint_fit.state_dict_in`),
    refused as a :class:`ConversionError`."""
    try:
        return state_dict_in(ckpt)
    except ValueError as e:
        raise ConversionError(str(e)) from None
