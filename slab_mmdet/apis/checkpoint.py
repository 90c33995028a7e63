"""Checkpoint files: written atomically (:mod:`.files`), and
read through mmengine with a clear error for a file that holds no checkpoint."""
import pickle
import re

import torch
from mmengine.runner.checkpoint import CheckpointLoader, load_from_local

from .files import atomic_output


def save_checkpoint(obj, path):
    """``torch.save(obj, path)`` through a temporary file in the same folder, renamed into place;
    the folder is created. On failure nothing is left at ``path`` (nor the temporary file)."""
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)
    return path


class UnsafeCheckpoint(pickle.UnpicklingError):
    """A checkpoint not loaded because rebuilding what it pickles would run code."""


def unsafe_checkpoint(path, names):
    """The one refusal of a checkpoint that pickles classes or functions (``names``, as
    'module.name') that only running code can rebuild, for every route that reads one."""
    return UnsafeCheckpoint(
        f'{path} is not loaded: it pickles {", ".join(names) or "objects"}, which only code can rebuild, and '
        f'loading it would run that code. No code from the checkpoint was run. Only tensors and plain data '
        f"(and mmengine's own training records) load here: save the weights alone, "
        f'torch.save(model.state_dict(), path), where the file is trusted and its classes are installed')


def globals_named_in(error):
    """The pickled globals torch's weights-only unpickler names in ``error`` (e.g. 'posix.system')."""
    return sorted(set(re.findall(r'GLOBAL ([\w.]+)', str(error))))


def load_checked(filename, map_location=None):
    """mmengine's local checkpoint loading, refusing by name what is no checkpoint: a file
    torch.load cannot read (a text file, a truncated download), or one that holds something
    else than a dict (a tensor, a list, a whole pickled model). Every route reads local
    checkpoints through it (load_from, init_cfg, mmdet's and our test.py, DetInferencer)."""
    try:
        checkpoint = load_from_local(filename, map_location)
    except (pickle.UnpicklingError, EOFError, RuntimeError, KeyError, UnicodeDecodeError, ValueError) as e:
        if isinstance(e, pickle.UnpicklingError) and globals_named_in(e):
            raise unsafe_checkpoint(filename, globals_named_in(e)) from None
        raise ValueError(f'{filename} is not a checkpoint that torch.save wrote (torch.load: {type(e).__name__}: '
                         f'{str(e).splitlines()[0][:200] if str(e) else "no message"}); give the .pth that training '
                         f'or tools/convert_checkpoint.py wrote') from e
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{filename} holds a {type(checkpoint).__name__}, not a state dict or a checkpoint: expected "
                         f"a dict of tensors, or a dict with a 'state_dict' (mmengine, mmdet) or 'model' entry. Save "
                         f"weights with torch.save(model.state_dict(), path)")
    return checkpoint


# Local paths (the '' scheme) are read by load_checked from the import of slab_mmdet on; other
# schemes (http, s3, ...) keep mmengine's loaders.
CheckpointLoader.register_scheme(prefixes='', loader=load_checked, force=True)
