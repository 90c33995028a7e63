"""Files written atomically: a crash, a full disk or a failed check never leaves half a file."""
import contextlib
import json
import os
import os.path as osp


@contextlib.contextmanager
def atomic_output(path, suffix=''):
    """Yield a temporary path beside ``path`` to write; when the block ends without an error
    the file is renamed to ``path``, otherwise it is removed and ``path`` is left as it was.

    ``suffix`` ends the temporary name (e.g. ``.onnx`` for tools that go by the extension).
    The folder is created; a ``path`` that is a directory is refused.
    """
    if osp.isdir(path):
        raise IsADirectoryError(f'cannot write {path!r}: it is a directory; give a file name')
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}{suffix}'
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def write_json(path, data, indent=1):
    """``data`` as JSON at ``path``, atomically."""
    with atomic_output(path) as tmp, open(tmp, 'w') as f:
        json.dump(data, f, indent=indent)
    return path
