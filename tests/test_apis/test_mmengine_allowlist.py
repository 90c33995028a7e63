"""Checkpoints written by mmengine load with torch.load(weights_only=True), and only they do.

slab_mmdet.apis.mmengine_allowlist allow-lists what mmengine writes beside the weights. These tests
resume a real Runner from its own checkpoint (the path `--resume`, `load_from` and
`mim test` take), and check that the allow-list opens nothing else: arbitrary classes
and getattr lookups other than HistoryBuffer's statistics methods are still refused.
"""
import copy
import inspect
import pickle
import uuid

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset

import slab_mmdet  # noqa: F401  (applies the allow-list)
from slab_mmdet.apis.mmengine_allowlist import HISTORY_BUFFER_METHODS

MAX_ITERS = 4
CKPT_INTERVAL = 2
LR, LR_STEP_AT, GAMMA = 0.1, 3, 0.1


class ToyModel(BaseModel):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 1)

    def forward(self, inputs, targets=None, mode='tensor'):
        out = self.linear(inputs)
        if mode == 'loss':
            return dict(loss=((out - targets) ** 2).mean())
        return out


class ToyDataset(Dataset):
    metainfo = dict(name='toy')

    def __init__(self, n=16):
        g = torch.Generator().manual_seed(0)
        self.inputs = torch.randn(n, 3, generator=g)
        self.targets = self.inputs @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, i):
        return dict(inputs=self.inputs[i], targets=self.targets[i])


def make_runner(work_dir, **kwargs):
    """A Runner with SGD + momentum and an LR step at iteration LR_STEP_AT, so that resuming
    gives the uninterrupted run's weights only if optimizer and scheduler state come back."""
    torch.manual_seed(0)
    return Runner(
        model=ToyModel(),
        work_dir=str(work_dir),
        # Unique: two runners with one name would share a MessageHub instance.
        experiment_name=f'toy_{uuid.uuid4().hex}',
        train_dataloader=dict(dataset=ToyDataset(), batch_size=4, num_workers=0,
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=LR, momentum=0.9)),
        param_scheduler=dict(type='MultiStepLR', milestones=[LR_STEP_AT], gamma=GAMMA, by_epoch=False),
        train_cfg=dict(by_epoch=False, max_iters=MAX_ITERS),
        default_hooks=dict(logger=dict(type='LoggerHook', interval=1),
                           checkpoint=dict(type='CheckpointHook', interval=CKPT_INTERVAL, by_epoch=False)),
        log_processor=dict(by_epoch=False, window_size=1),
        randomness=dict(seed=0),
        default_scope='mmengine',
        **kwargs)


def history(runner, key):
    """The message hub's logged values of `key`, oldest first."""
    return runner.message_hub.get_scalar(key).data[0]


class Payload:
    """An arbitrary class, which must not load with weights_only=True."""


class GetattrPickle:
    """Pickles as `getattr(obj, name)`, the way a reference to a bound attribute does."""

    def __init__(self, obj, name):
        self.obj, self.name = obj, name

    def __reduce__(self):
        return getattr, (self.obj, self.name)


def save(obj, path):
    torch.save(obj, path)
    return str(path)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    """A run of MAX_ITERS iterations, checkpointing every CKPT_INTERVAL."""
    work_dir = tmp_path_factory.mktemp('uninterrupted')
    runner = make_runner(work_dir)
    runner.train()
    return runner, work_dir


def test_torch_load_is_not_patched():
    """We allow-list types; torch.load itself and its weights_only default stay torch's
    (None: weights_only=True, which the refusal tests below show in action)."""
    import torch.serialization
    assert torch.load is torch.serialization.load
    assert torch.load.__module__ == 'torch.serialization'
    assert inspect.signature(torch.load).parameters['weights_only'].default is None


def test_runner_checkpoint_loads_with_weights_only(uninterrupted):
    runner, work_dir = uninterrupted
    ckpt = torch.load(work_dir / f'iter_{CKPT_INTERVAL}.pth', map_location='cpu', weights_only=True)
    assert ckpt['meta']['iter'] == CKPT_INTERVAL
    buffer = ckpt['message_hub']['log_scalars']['train/loss']
    assert isinstance(buffer, HistoryBuffer)
    np.testing.assert_allclose(buffer.data[0], history(runner, 'train/loss')[:CKPT_INTERVAL])
    assert set(ckpt['optimizer']['state']) and 'momentum_buffer' in ckpt['optimizer']['state'][0]


def test_resume_continues_the_run_exactly(uninterrupted, tmp_path):
    """Resuming from iteration 2 and training to 4 gives the uninterrupted run's weights, LR
    and logged losses: model, optimizer (momentum), scheduler and message hub are restored."""
    reference, ref_dir = uninterrupted
    runner = make_runner(tmp_path, resume=True, load_from=str(ref_dir / f'iter_{CKPT_INTERVAL}.pth'))
    runner.train()

    assert runner.iter == MAX_ITERS
    assert (tmp_path / f'iter_{MAX_ITERS}.pth').is_file()
    for (name, p), (_, p_ref) in zip(runner.model.named_parameters(), reference.model.named_parameters()):
        torch.testing.assert_close(p, p_ref, msg=f'{name} differs from the uninterrupted run')
    assert runner.optim_wrapper.get_lr()['lr'] == pytest.approx([LR * GAMMA])
    # The history before the checkpoint came back from it; the rest was logged after resuming.
    np.testing.assert_allclose(history(runner, 'train/loss'), history(reference, 'train/loss'), rtol=1e-6)
    assert len(history(runner, 'train/loss')) == MAX_ITERS
    expected_lr = [LR] * LR_STEP_AT + [LR * GAMMA] * (MAX_ITERS - LR_STEP_AT)
    np.testing.assert_allclose(history(runner, 'train/lr'), expected_lr)


def test_resume_without_optimizer_state_would_differ(uninterrupted, tmp_path):
    """Control for the test above: the comparison sees a lost momentum buffer."""
    reference, ref_dir = uninterrupted
    ckpt = torch.load(ref_dir / f'iter_{CKPT_INTERVAL}.pth', map_location='cpu')
    ckpt['optimizer']['state'] = {}
    runner = make_runner(tmp_path, resume=True, load_from=save(ckpt, tmp_path / 'no_momentum.pth'))
    runner.train()
    assert runner.iter == MAX_ITERS
    assert not torch.allclose(runner.model.linear.weight, reference.model.linear.weight)


def test_arbitrary_class_in_checkpoint_is_refused(uninterrupted, tmp_path):
    _, ref_dir = uninterrupted
    ckpt = torch.load(ref_dir / f'iter_{CKPT_INTERVAL}.pth', map_location='cpu')
    ckpt['meta']['payload'] = Payload()
    path = save(ckpt, tmp_path / 'payload.pth')
    with pytest.raises(pickle.UnpicklingError, match='Payload'):
        torch.load(path)
    # ...and so does resuming a Runner from it (mmengine calls torch.load without weights_only).
    runner = make_runner(tmp_path / 'work', resume=True, load_from=path)
    with pytest.raises(pickle.UnpicklingError, match='Payload'):
        runner.train()


@pytest.mark.parametrize('obj, name', [
    (HistoryBuffer, '__init__'),         # an allowed class, but not a statistics method
    (HistoryBuffer, '__class__'),
    (HistoryBuffer, 'update'),
    (np.ndarray, 'tofile'),              # another allowed class
    (torch.Tensor, 'mean'),              # a statistics name on another class
])
def test_getattr_other_than_history_buffer_statistics_is_refused(tmp_path, obj, name):
    path = save({'x': GetattrPickle(obj, name)}, tmp_path / 'getattr.pth')
    with pytest.raises(pickle.UnpicklingError, match=f'getattr.*{name}'):
        torch.load(path)


@pytest.mark.parametrize('name', sorted(HISTORY_BUFFER_METHODS))
def test_getattr_of_history_buffer_statistics_loads(tmp_path, name):
    path = save({'x': GetattrPickle(HistoryBuffer, name)}, tmp_path / 'getattr.pth')
    assert torch.load(path)['x'] is getattr(HistoryBuffer, name)


def test_history_buffer_with_custom_statistics_round_trips(tmp_path):
    buffer = HistoryBuffer([1.0, 2.0, 4.0], [1, 1, 1])
    loaded = torch.load(save({'b': copy.deepcopy(buffer)}, tmp_path / 'hb.pth'))['b']
    np.testing.assert_array_equal(loaded.data[0], buffer.data[0])
    assert loaded.mean() == pytest.approx(7 / 3) and loaded.current() == 4.0


def test_an_empty_history_buffer_loads_with_weights_only(tmp_path):
    """A message hub entry that was never updated: its empty numpy array pickles bytes."""
    from mmengine.logging import HistoryBuffer
    path = tmp_path / 'empty.pth'
    torch.save({'meta': {'hub': {'train/never': HistoryBuffer()}}}, path)
    loaded = torch.load(path, weights_only=True)['meta']['hub']['train/never']
    assert isinstance(loaded, HistoryBuffer) and len(loaded.data[0]) == 0
