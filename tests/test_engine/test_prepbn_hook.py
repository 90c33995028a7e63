"""PRepBNHook: its arguments, and real mmengine Runner runs of a toy PRepBN model (the schedule
maths alone: tests/test_engine/test_prepbn_schedule.py)."""
import glob
import json
import math
import os.path as osp

import pytest
import torch
import torch.nn as nn
from mmengine.hooks import Hook

from slab_mmdet.engine import PRepBNHook, check_ddp_find_unused_parameters
from testing_utils.helpers import ToyTokenModel, runner_log_text, toy_runner


# These models are tiny: one thread is much faster than two on the shared 2-core machine.
pytestmark = pytest.mark.usefixtures('one_torch_thread')


def linear(t, T, warmup=0):
    t = t - warmup
    return 1.0 if t < 0 else max(0.0, (T - t) / T)


def cosine(t, T, warmup=0):
    t = t - warmup
    return 1.0 if t < 0 else (0.0 if t >= T else 0.5 * (1 + math.cos(math.pi * t / T)))


def step(t, T, n, warmup=0):
    t = t - warmup
    return 1.0 if t < 0 else (0.0 if t >= T else 1 - math.floor(n * t / T) / n)


@pytest.mark.parametrize('kwargs, match', [
    (dict(), r'exactly one of anneal_iters .* got anneal_iters=None, anneal_ratio=None'),
    (dict(anneal_iters=10, anneal_ratio=0.5), r'exactly one .* got anneal_iters=10, anneal_ratio=0.5'),
    (dict(anneal_iters=0), 'anneal_iters must be an int >= 1, got 0'),
    (dict(anneal_iters=2.5), 'anneal_iters must be an int >= 1, got 2.5'),
    (dict(anneal_ratio=1.5), r'anneal_ratio must be a float in \(0, 1\], got 1.5'),
    (dict(anneal_ratio=0.0), r'anneal_ratio must be a float in \(0, 1\], got 0.0'),
    (dict(anneal_iters=5, warmup_iters=-1), 'warmup_iters must be an int >= 0, got -1'),
    (dict(anneal_iters=5, schedule='exp'), r"one of \['cosine', 'linear', 'step'\], got 'exp'"),
    (dict(anneal_iters=5, num_steps=3), r"'linear' takes no parameters; got \['num_steps'\]"),
    (dict(anneal_iters=5, schedule='step', num_steps=0), 'num_steps must be an int >= 1, got 0'),
    (dict(anneal_iters=5, start_g=1.5), r"start_g must be 'model' or a float in \[0, 1\], got 1.5"),
    (dict(anneal_iters=5, start_g='layer'), r"start_g must be 'model' or a float in \[0, 1\], got 'layer'"),
    (dict(anneal_iters=5, recalibrate_bn_iters=-2), 'recalibrate_bn_iters must be an int >= 0'),
])
def test_hook_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PRepBNHook(**kwargs)


# --------------------------------------------------------------------------- runs
def message_hub_g(runner):
    """The 'train/prepbn_g' values logged at every iteration."""
    return [float(v) for v in runner.message_hub.get_scalar('train/prepbn_g').data[0]]


def assert_all_layers(recorded, expected):
    """`recorded`: per-iteration lists of every layer's g; `expected`: one value per iteration."""
    assert len(recorded) == len(expected)
    for it, (gs, e) in enumerate(zip(recorded, expected)):
        assert gs == pytest.approx([e] * len(gs), abs=1e-12), f'iteration {it}'


@pytest.mark.parametrize('schedule, num_steps, reference', [
    ('linear', None, lambda t: linear(t, 4, warmup=2)),
    ('cosine', None, lambda t: cosine(t, 4, warmup=2)),
    ('step', 2, lambda t: step(t, 4, 2, warmup=2)),
])
def test_iter_based_schedule_and_log(tmp_path, schedule, num_steps, reference):
    # max_iters 8, anneal_ratio 0.5 -> T = 4 after 2 warm-up iterations: g = 0 from iteration 6.
    extra = {} if num_steps is None else dict(num_steps=num_steps)
    hook = dict(type='PRepBNHook', anneal_ratio=0.5, warmup_iters=2, schedule=schedule, **extra)
    runner = toy_runner(tmp_path, [hook], max_iters=8)
    runner.train()
    expected = [reference(t) for t in range(8)]
    assert_all_layers(runner.model.train_g, expected)
    assert message_hub_g(runner) == pytest.approx(expected)
    assert runner.model.prepbn_g() == [0.0, 0.0, 0.0]  # exactly 0 at the end
    # The value shows in the text log line and in the visualizer's scalars.
    log = runner_log_text(runner)
    for t in (0, 3, 7):
        assert f'Iter(train) [{t + 1}/8]' in log
        line = next(x for x in log.splitlines() if f'Iter(train) [{t + 1}/8]' in x)
        assert f'prepbn_g: {expected[t]:.4f}' in line
    assert 'anneal complete, all 3 PRepBN layers have g = 0' in log
    scalars = glob.glob(osp.join(runner.log_dir, 'vis_data', 'scalars.json'))[0]
    with open(scalars) as f:
        logged = [json.loads(x) for x in f if x.strip()]
    assert [d['prepbn_g'] for d in logged if 'prepbn_g' in d] == pytest.approx(expected)


def test_epoch_based_anneal_ratio_and_validation(tmp_path):
    # 8 samples / batch 2 = 4 iterations per epoch, 3 epochs: max_iters 12, T = 0.75 * 12 = 9.
    hook = PRepBNHook(anneal_ratio=0.75, schedule='cosine')
    runner = toy_runner(tmp_path, [hook], max_epochs=3, val_interval=1)
    runner.train()
    assert hook.T == 9 and hook.max_iters == 12
    assert_all_layers(runner.model.train_g, [cosine(t, 9) for t in range(12)])
    # Validation after epochs 1, 2, 3 (4 batches each) sees the post-step g of iterations 4, 8, 12.
    assert_all_layers(runner.model.val_g, [cosine(t, 9) for t in (4, 8, 12) for _ in range(4)])
    assert runner.model.prepbn_g() == [0.0, 0.0, 0.0]
    assert 'prepbn_g: 1.0000' in runner_log_text(runner)


def test_anneal_ratio_rounds_half_up(tmp_path):
    hook = PRepBNHook(anneal_ratio=0.5)
    runner = toy_runner(tmp_path, [hook], max_iters=5)
    runner.train()
    assert hook.T == 3  # 2.5 -> 3 (Python's round() would give 2)
    assert_all_layers(runner.model.train_g, [1.0, 2 / 3, 1 / 3, 0.0, 0.0])


def test_validation_between_iterations(tmp_path):
    runner = toy_runner(tmp_path, [dict(type='PRepBNHook', anneal_iters=6)], max_iters=6, val_interval=2,
                        batch_size=4)
    runner.train()
    assert_all_layers(runner.model.val_g, [linear(t, 6) for t in (2, 2, 4, 4, 6, 6)])


def test_gradient_accumulation_holds_g_per_window(tmp_path):
    # Windows of 2 iterations: g evaluated at 0, 0, 2, 2, 4, 4, 6; after the last iteration at max_iters.
    hook = PRepBNHook(anneal_iters=5)
    runner = toy_runner(tmp_path, [hook], max_iters=7, accumulative_counts=2)
    runner.train()
    assert hook.accumulative_counts == 2
    assert_all_layers(runner.model.train_g, [1.0, 1.0, 0.6, 0.6, 0.2, 0.2, 0.0])
    assert runner.model.prepbn_g() == [0.0, 0.0, 0.0]


def test_start_g_model_keeps_annealed_layers(tmp_path):
    # Layer 1 comes from an already annealed checkpoint (g = 0), layer 2 starts half way.
    model = ToyTokenModel(start_g=[1.0, 0.0, 0.6])
    runner = toy_runner(tmp_path, [dict(type='PRepBNHook', anneal_iters=4)], model=model, max_iters=6)
    runner.train()
    for t, gs in enumerate(model.train_g):
        s = linear(t, 4)
        assert gs == pytest.approx([s, 0.0, 0.6 * s])
    assert message_hub_g(runner) == pytest.approx([linear(t, 4) for t in range(6)])  # the largest g
    assert model.prepbn_g() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize('start_g', [1.0, 0.5])
def test_start_g_float_forces_every_layer(tmp_path, start_g):
    model = ToyTokenModel(start_g=[1.0, 0.0, 0.6])
    runner = toy_runner(tmp_path, [dict(type='PRepBNHook', anneal_iters=4, start_g=start_g)], model=model,
                        max_iters=5)
    runner.train()
    assert_all_layers(model.train_g, [start_g * linear(t, 4) for t in range(5)])


class StopAt(Hook):
    """Stops an iteration-based run after `iters` iterations."""
    priority = 'LOWEST'

    def __init__(self, iters):
        self.iters = iters

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.iters:
            runner.train_loop.stop_training = True


def test_resume_is_exact(tmp_path):
    hook = dict(type='PRepBNHook', anneal_ratio=0.6, warmup_iters=1)  # T = 6: g = 0 from iteration 7
    start = [1.0, 0.0, 0.6]
    full = toy_runner(tmp_path / 'full', [hook], model=ToyTokenModel(start_g=start), max_iters=10)
    full.train()

    first = toy_runner(tmp_path / 'first', [hook, StopAt(4)], model=ToyTokenModel(start_g=start), max_iters=10,
                       checkpoint_interval=4)
    first.train()
    assert len(first.model.train_g) == 4
    ckpt = str(tmp_path / 'first' / 'iter_4.pth')
    saved = torch.load(ckpt, map_location='cpu')  # weights_only=True (torch's default)
    assert saved['meta']['prepbn_start_g'] == {'blocks.0.0': 1.0, 'blocks.1.0': 0.0, 'blocks.2.0': 0.6}
    assert float(saved['state_dict']['blocks.0.0.g']) == pytest.approx(linear(4, 6, warmup=1))  # post-step value

    # A fresh model (all g = 1) resumed from the checkpoint continues the same anneal.
    resumed = toy_runner(tmp_path / 'resumed', [hook], model=ToyTokenModel(), max_iters=10, load_from=ckpt,
                         resume=True)
    resumed.train()
    assert first.model.train_g + resumed.model.train_g == full.model.train_g
    assert message_hub_g(resumed)[-6:] == message_hub_g(full)[-6:]
    full_state, resumed_state = full.model.state_dict(), resumed.model.state_dict()
    for name in full_state:
        torch.testing.assert_close(resumed_state[name], full_state[name], rtol=0, atol=0, msg=name)
    assert resumed.model.prepbn_g() == [0.0, 0.0, 0.0]


def test_resume_without_start_values_infers_them_from_the_held_g(tmp_path):
    hook = dict(type='PRepBNHook', anneal_iters=6)
    start = [1.0, 0.0, 0.6]
    first = toy_runner(tmp_path / 'first', [hook, StopAt(2)], model=ToyTokenModel(start_g=start),
                       max_iters=8, checkpoint_interval=2)
    first.train()
    ckpt = torch.load(str(tmp_path / 'first' / 'iter_2.pth'), map_location='cpu')
    del ckpt['meta']['prepbn_start_g']
    old = str(tmp_path / 'old.pth')
    torch.save(ckpt, old)
    resumed = toy_runner(tmp_path / 'resumed', [hook], max_iters=8, load_from=old, resume=True)
    resumed.train()
    expected = [[g0 * linear(t, 6) for g0 in start] for t in range(2, 8)]
    for got, want in zip(resumed.model.train_g, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-12)
    assert "the checkpoint has no start value of g (meta['prepbn_start_g']) for 3 PRepBN layer(s)" in \
        runner_log_text(resumed)


def first_half(tmp_path, hook, stop, max_iters):
    """Train until ``stop`` with a checkpoint there; returns its path."""
    runner = toy_runner(tmp_path / 'first', [hook, StopAt(stop)], max_iters=max_iters, checkpoint_interval=stop)
    runner.train()
    return str(tmp_path / 'first' / f'iter_{stop}.pth')


def test_a_finished_anneal_resumed_with_more_iterations_stays_at_zero(tmp_path):
    """anneal_ratio=0.5 of 8 iterations: g = 0 from iteration 4. Resumed at 8 with max_iters 24, the
    same ratio means T = 12 and g(8) = 1/3 -- the anneal would run backwards; it must not."""
    hook = dict(type='PRepBNHook', anneal_ratio=0.5)
    ckpt = first_half(tmp_path, hook, 8, 8)
    resumed = toy_runner(tmp_path / 'resumed', [hook], max_iters=24, load_from=ckpt, resume=True)
    resumed.train()
    assert_all_layers(resumed.model.train_g, [0.0] * 16)
    log = runner_log_text(resumed)
    assert ("resuming at iteration 8 with another schedule than the checkpoint's (checkpoint: linear over 4 "
            "iterations after 0 warm-up iterations (g = 0 from iteration 4); now: linear over 12 iterations after "
            "0 warm-up iterations (g = 0 from iteration 12))") in log
    assert 'from the g it holds, 0, to 0.333333' in log and 'the anneal only goes forward' in log


def test_a_changed_schedule_continues_from_the_held_g(tmp_path):
    """Stopped at iteration 2 of a 6-iteration anneal (g = 2/3); resumed with a 10-iteration one
    (which would give g(2) = 0.8): g continues from 2/3, linearly to 0 at iteration 10."""
    ckpt = first_half(tmp_path, dict(type='PRepBNHook', anneal_iters=6), 2, 12)
    resumed = toy_runner(tmp_path / 'resumed', [dict(type='PRepBNHook', anneal_iters=10)], max_iters=12,
                         load_from=ckpt, resume=True)
    resumed.train()
    assert_all_layers(resumed.model.train_g, [2 / 3 * linear(t - 2, 8) for t in range(2, 12)])
    assert 'from the g it holds, 0.666667, to 0.8' in runner_log_text(resumed)


def test_resuming_again_with_the_same_changed_schedule_continues_without_a_warning(tmp_path):
    """The second resume of the changed schedule continues the anneal the first resume set up
    (from the held g, linearly to 0 at iteration 10): no warning about another schedule."""
    ckpt = first_half(tmp_path, dict(type='PRepBNHook', anneal_iters=6), 2, 12)
    hook = dict(type='PRepBNHook', anneal_iters=10)
    second = toy_runner(tmp_path / 'second', [hook, StopAt(5)], max_iters=12, load_from=ckpt, resume=True,
                        checkpoint_interval=5)
    second.train()
    third = toy_runner(tmp_path / 'third', [hook], max_iters=12, load_from=str(tmp_path / 'second' / 'iter_5.pth'),
                       resume=True)
    third.train()
    assert_all_layers(second.model.train_g + third.model.train_g,
                      [2 / 3 * linear(t - 2, 8) for t in range(2, 12)])
    assert 'another schedule' in runner_log_text(second)
    assert 'another schedule' not in runner_log_text(third)
    assert 'continuing the anneal as the checkpoint\'s run adjusted it' in runner_log_text(third)


def test_allow_g_increase_follows_the_new_schedule_with_a_warning(tmp_path):
    ckpt = first_half(tmp_path, dict(type='PRepBNHook', anneal_iters=6), 2, 12)
    hook = dict(type='PRepBNHook', anneal_iters=10, allow_g_increase=True)
    resumed = toy_runner(tmp_path / 'resumed', [hook], max_iters=12, load_from=ckpt, resume=True)
    resumed.train()
    assert_all_layers(resumed.model.train_g, [linear(t, 10) for t in range(2, 12)])
    assert 'allow_g_increase=True, so g follows the new schedule' in runner_log_text(resumed)
    with pytest.raises(ValueError, match="allow_g_increase must be True or False, got 'yes'"):
        PRepBNHook(anneal_iters=3, allow_g_increase='yes')


def test_unfinished_anneal_warns(tmp_path):
    runner = toy_runner(tmp_path, [dict(type='PRepBNHook', anneal_iters=20, warmup_iters=2)], max_iters=6)
    runner.train()
    g = linear(6, 20, warmup=2)
    assert runner.model.prepbn_g() == pytest.approx([g] * 3)
    log = runner_log_text(runner)
    assert (f'training ended at iteration 6 before the PRepBN anneal finished (g reaches 0 at iteration 22): '
            f'the model still has g = {g:.6g} in 3 of 3 PRepBN layers, so its norms cannot be fused') in log


class Tamper(Hook):
    """Changes one PRepBN's g after the hook's last update."""
    priority = 'LOWEST'

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == runner.max_iters:
            runner.model.blocks[1][0].set_g(0.25)


def test_end_check_names_layers_with_wrong_g(tmp_path):
    runner = toy_runner(tmp_path, [dict(type='PRepBNHook', anneal_iters=3), Tamper()], max_iters=4)
    with pytest.raises(RuntimeError, match=r'1 PRepBN layer\(s\) do not have the scheduled g.*'
                                           r'blocks\.1\.0: g=0\.25 \(expected 0\)'):
        runner.train()


def test_model_without_prepbn_is_a_clear_error(tmp_path):
    runner = toy_runner(tmp_path, [dict(type='PRepBNHook', anneal_iters=3)],
                        model=ToyTokenModel(norm=nn.LayerNorm), max_iters=2)
    with pytest.raises(ValueError, match=r'the model \(ToyTokenModel\) has no PRepBN layer.*'
                                         r'model\.backbone\.norm_cfg = dict\(type="PRepBN"\)'):
        runner.train()


def test_ddp_needs_find_unused_parameters():
    from torch.nn.parallel import DistributedDataParallel

    def stub(find_unused):
        # A DistributedDataParallel without a process group: only what the check reads.
        ddp = DistributedDataParallel.__new__(DistributedDataParallel)
        nn.Module.__init__(ddp)
        ddp.module = ToyTokenModel()
        ddp.find_unused_parameters = find_unused
        return ddp

    with pytest.raises(ValueError, match=r'Set `find_unused_parameters = True` in the config'):
        check_ddp_find_unused_parameters(stub(False))
    check_ddp_find_unused_parameters(stub(True))
    check_ddp_find_unused_parameters(ToyTokenModel())

    class FakeRunner:
        model = stub(False)

    with pytest.raises(ValueError, match='find_unused_parameters=False'):
        PRepBNHook(anneal_iters=3).before_train(FakeRunner())



# --------------------------------------------------------------------------- EMA models
@pytest.mark.parametrize('update_buffers', [True, False])
def test_ema_model_runs_the_same_g_as_the_trained_model(tmp_path, update_buffers):
    """mmengine's EMAHook keeps an averaged copy of the model; with update_buffers=True it
    averages the g buffers too. The EMA model must run the scheduled g (never an average
    of g values, never its stale initial g = 1): during validation (EMAHook swaps the EMA
    weights in) every forward sees the schedule's g, and the EMA model's outputs are those
    of a plain model with the EMA weights and that g."""
    hooks = [dict(type='EMAHook', momentum=0.5, update_buffers=update_buffers),
             dict(type='PRepBNHook', anneal_iters=6)]
    runner = toy_runner(tmp_path, hooks, max_iters=8, val_interval=2)
    runner.train()
    # Validation after iterations 2, 4, 6, 8 ran with the EMA weights swapped in.
    assert_all_layers(runner.model.val_g, [linear(t, 6) for t in (2, 4, 6, 8) for _ in range(4)])
    ema_hook = next(h for h in runner.hooks if type(h).__name__ == 'EMAHook')
    ema = ema_hook.ema_model.module
    assert ema.prepbn_g() == [0.0, 0.0, 0.0] == runner.model.prepbn_g()
    # The EMA model's output is the output of its own weights at g = 0.
    plain = ToyTokenModel()
    plain.load_state_dict(ema.state_dict())
    x = torch.randn(2, 6, 4)
    with torch.no_grad():
        torch.testing.assert_close(ema.eval()(x), plain.eval()(x))
        for _, m in plain.named_modules():
            if hasattr(m, 'set_g'):
                m.set_g(1.0)
        assert not torch.allclose(ema(x), plain(x))   # g matters: the EMA model did not run g = 1
