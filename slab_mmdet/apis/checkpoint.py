"""Writing checkpoint files atomically (a crash or a full disk never leaves half a file)."""
import os
import os.path as osp

import torch


def save_checkpoint(obj, path):
    """``torch.save(obj, path)`` through a temporary file in the same folder, renamed into place;
    the folder is created. On failure nothing is left at ``path`` (nor the temporary file)."""
    if osp.isdir(path):
        raise IsADirectoryError(f'cannot write the checkpoint {path!r}: it is a directory; give a file name')
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    return path
