"""Shared by the converter tests: a throwaway module whose objects run code when unpickled
(standing in for yacs), checkpoints saved like the SLAB authors' training script, the
golden reference state dicts, the conversion CLI, and helpers comparing converted models."""
import importlib
import os.path as osp
import re
import sys
import uuid

import pytest
import torch
from mmdet.registry import MODELS

from slab_mmdet.models.layers import iter_prepbn
from testing_utils import TEST_DATA_DIR
from testing_utils.helpers import load_script

MARKER_TEXT = 'code from the checkpoint ran'

# A module standing in for yacs: unpickling its objects with their real classes writes
# a marker file (CfgNode.__setstate__, and Trap's __reduce__ calling write_marker).
TRAP_SOURCE = f'''
import pathlib


def write_marker(path):
    pathlib.Path(path).write_text({MARKER_TEXT!r})


class CfgNode(dict):
    def __init__(self, items=None, marker=None):
        super().__init__(items or {{}})
        self.__dict__['marker'] = marker

    def __setstate__(self, state):
        write_marker(state['marker'])
        self.__dict__.update(state)


class Trap:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (write_marker, (self.marker,))


class ListNode(list):
    pass
'''


def make_trap_module(directory, monkeypatch):
    """An importable throwaway module of TRAP_SOURCE in ``directory`` (made unimportable by its
    ``make_unimportable``); returns it and its name."""
    name = f'slab_convert_trap_{uuid.uuid4().hex[:8]}'
    path = directory / 'trap' / f'{name}.py'
    path.parent.mkdir()
    path.write_text(TRAP_SOURCE)
    monkeypatch.syspath_prepend(str(path.parent))
    module = importlib.import_module(name)

    def make_unimportable():
        sys.modules.pop(name, None)
        path.unlink()
        importlib.invalidate_caches()
        with pytest.raises(ImportError):
            importlib.import_module(name)

    module.make_unimportable = make_unimportable
    return module, name


def save_like_reference_training(path, state_dict, config):
    """What the authors' classification/utils.py save_checkpoint writes."""
    torch.save({'model': state_dict, 'optimizer': {'state': {}, 'param_groups': [{'lr': 5e-4, 'params': [0]}]},
                'lr_scheduler': {'last_epoch': 299}, 'max_accuracy': 76.5, 'epoch': 299, 'config': config}, path)


def reference_config(trap, marker):
    model = trap.CfgNode({'NAME': 'slab_pvt_tiny', 'TYPE': 'slab_pvt_tiny'}, marker=str(marker))
    return trap.CfgNode({'MODEL': model, 'HOOK': trap.Trap(str(marker))}, marker=str(marker))


def golden_state_dict(name):
    return torch.load(osp.join(TEST_DATA_DIR, f'reference_golden_{name}.pt'), weights_only=True)['state_dict']


def load_cli():
    return load_script('tools/convert_checkpoint.py', 'convert_checkpoint_cli')


def run_cli(args):
    """``main(args)``; returns the SystemExit message, or None when it succeeds."""
    try:
        assert load_cli().main([str(a) for a in args]) == 0
    except SystemExit as e:
        return str(e.code)
    return None


def randomise(model, seed=0):
    """Random weights, LayerNorm affines away from (1, 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if not value.dtype.is_floating_point:
                continue
            if value.dim() == 1 and key.endswith('weight'):
                value.copy_(1 + 0.3 * torch.randn(value.shape, generator=gen))
            else:
                value.copy_((0.3 if value.dim() == 1 else 0.05) * torch.randn(value.shape, generator=gen))
    model.eval()   # (mmdet's SwinTransformer.train returns None)
    return model


def block_outputs(model, blocks, x):
    """Outputs of the given blocks (each stage's last) in a forward pass."""
    outs = []
    hooks = [b.register_forward_hook(lambda m, i, o: outs.append(o)) for b in blocks]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return outs


def build_converted(state_dict, report):
    ours = MODELS.build(dict(report.backbone_cfg, drop_path_rate=0.0))
    missing, unexpected = ours.load_state_dict(state_dict, strict=False)
    assert unexpected == [] and all(re.match(r'norm\d\.', k) for k in missing), missing
    assert all(m.g_value == 1.0 for n, m in iter_prepbn(ours))
    return ours.eval()
