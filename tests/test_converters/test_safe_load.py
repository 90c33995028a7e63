"""Loading a checkpoint without running its code (slab_mmdet.converters.safe_load): a checkpoint
saved like the SLAB authors' training script, whose pickled training config is a foreign dict
subclass (standing in for yacs' CfgNode) that would write a marker file if its code ran, loads as
inert data; other foreign objects that weights-only loading cannot build fail with a clear error."""
import re

import pytest
import torch
from testing_utils.converter_utils import (MARKER_TEXT, golden_state_dict, reference_config,
                                           save_like_reference_training)

from slab_mmdet.converters import ConversionError, convert_state_dict, foreign_class_of, load_checkpoint_safely


def test_foreign_training_config_loads_as_inert_data_without_running_code(tmp_path, trap_module):
    marker = tmp_path / 'MARKER'
    weights = golden_state_dict('pvt')
    src = tmp_path / 'ckpt.pth'
    save_like_reference_training(src, weights, reference_config(trap_module, marker))
    name = trap_module.__name__

    def check_loaded():
        ckpt, foreign = load_checkpoint_safely(str(src))
        assert not marker.exists()
        assert set(foreign) == {f'{name}.CfgNode', f'{name}.write_marker'}
        config = ckpt['config']
        assert foreign_class_of(config) == f'{name}.CfgNode'
        assert config['MODEL']['NAME'] == 'slab_pvt_tiny'           # the items survive, as data
        assert config.marker == str(marker)                         # so does the instance state
        assert foreign_class_of(config['HOOK']) == f'{name}.write_marker'
        assert config['HOOK'].pickled_args == (str(marker),)        # the call is recorded, not made
        assert ckpt['epoch'] == 299 and ckpt['max_accuracy'] == 76.5
        assert ckpt['model'].keys() == weights.keys()
        assert all(torch.equal(ckpt['model'][k], v) for k, v in weights.items())
        return ckpt

    check_loaded()   # the trap's module is importable: still nothing of it runs
    # Control: a full unpickling does run the trap.
    torch.load(src, weights_only=False)
    assert marker.read_text() == MARKER_TEXT
    marker.unlink()
    trap_module.make_unimportable()   # like a machine without yacs
    _, report = convert_state_dict(check_loaded()['model'])
    assert report.unmapped == [] and report.backbone_cfg['attn_types'] == 'LSLL'
    assert not marker.exists()


@pytest.mark.parametrize('make, named', [
    (lambda trap, marker: trap.ListNode([1, 2]), 'ListNode'),
    (lambda trap, marker: type('Sys', (), {'__reduce__': lambda self: (__import__('os').system,
                                                                        (f'echo > {marker}',))})(),
     r'(posix|os|nt)\.system'),
], ids=['list-subclass', 'reduce-to-os.system'])
def test_foreign_objects_that_cannot_be_read_as_data_fail_clearly(tmp_path, trap_module, make, named):
    marker = tmp_path / 'MARKER'
    src = tmp_path / 'ckpt.pth'
    torch.save({'model': {'w': torch.ones(2)}, 'extra': make(trap_module, marker)}, src)
    with pytest.raises(ConversionError) as info:
        load_checkpoint_safely(str(src))
    message = str(info.value)
    assert re.search(named, message) and 'No code from the checkpoint was run' in message
    assert not marker.exists()
