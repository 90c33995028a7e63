"""Files written atomically (slab_mmdet.apis.files): a failure leaves the old file and no
temporary one."""
import os

import pytest

from slab_mmdet.apis import atomic_output, write_json


def test_atomic_output_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / 'sub' / 'r.json'
    write_json(str(path), {'a': 1})
    with pytest.raises(RuntimeError, match='interrupted'):
        with atomic_output(str(path)) as tmp:
            with open(tmp, 'w') as f:
                f.write('{"a": ')
            raise RuntimeError('interrupted')
    assert path.read_text().replace(' ', '').replace('\n', '') == '{"a":1}'
    assert os.listdir(path.parent) == ['r.json']
    with pytest.raises(IsADirectoryError, match='is a directory'):
        with atomic_output(str(tmp_path)):
            pass
