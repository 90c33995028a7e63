"""Checks shared by the SLAB-PVT and SLAB-Swin backbone tests (tests/test_models/test_slab_*.py).

Each helper states a property every SLAB backbone must have; the per-backbone test
files supply the configurations (and, where the layouts differ, which parameters a
property concerns).
"""
import math

import pytest
import torch
from mmdet.registry import MODELS
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import slab_mmdet  # noqa: F401  (registers the backbones)
from slab_mmdet.models.layers import iter_prepbn

STRIDES = (4, 8, 16, 32)
# Small archs of each backbone, for speed (the real ones are tested at detection size).
PVT_MINI_ARCH = dict(embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4), mlp_ratios=(2, 2, 2, 2),
                     sr_ratios=(8, 4, 2, 1), depths=(1, 1, 1, 1))
PVT_MINI = dict(type='SLABPyramidVisionTransformer', arch=PVT_MINI_ARCH)
SWIN_MINI_ARCH = dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))
SWIN_MINI = dict(type='SLABSwinTransformer', arch=SWIN_MINI_ARCH)


def build_backbone(cfg, seed=0):
    """Build a backbone from ``cfg`` and initialise its weights deterministically."""
    torch.manual_seed(seed)
    model = MODELS.build(dict(cfg))
    model.init_weights()
    return model


def set_prepbn_g(model, g):
    """Set every PRepBN's LayerNorm weight g; returns how many there are."""
    norms = [m for _, m in iter_prepbn(model)]
    for m in norms:
        m.set_g(g)
    return len(norms)


def expected_shapes(channels, height, width, batch=1, out_indices=(0, 1, 2, 3)):
    """Output shapes at strides 4/8/16/32 with ceil division (inputs are padded)."""
    return [(batch, channels[i], math.ceil(height / STRIDES[i]), math.ceil(width / STRIDES[i]))
            for i in out_indices]


def check_outputs(model, height, width, batch=1, seed=0):
    """Run ``model`` in eval mode on a random (batch, 3, height, width) input; assert
    the output shapes (ceil division by the strides) and finiteness; return the outputs."""
    torch.manual_seed(seed)
    model.eval()
    with torch.no_grad():
        outs = model(torch.randn(batch, 3, height, width))
    assert [tuple(o.shape) for o in outs] == expected_shapes(model.num_features, height, width, batch,
                                                            model.out_indices)
    for i, o in zip(model.out_indices, outs):
        assert torch.isfinite(o).all(), f'stage {i} output has non-finite values at {height}x{width}'
    return outs


def loss_on_all_outputs(outs):
    """A loss that depends on every element of every output (random weights so that
    no gradient cancels out by symmetry, e.g. through a mean-subtracting norm)."""
    gen = torch.Generator().manual_seed(1)
    return sum((o * torch.randn(o.shape, generator=gen)).sum() for o in outs)


def assert_gradients_reach_every_parameter(model, height, width, batch=2):
    """Train mode with g = 0.5 (LayerNorm and RepBN branches both run): every parameter
    gets a finite, non-zero gradient from a loss on all outputs."""
    assert set_prepbn_g(model, 0.5) > 0
    model.train()
    outs = model(torch.randn(batch, 3, height, width))
    loss_on_all_outputs(outs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f'no gradient reaches {missing}'
    zero = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert not zero, f'zero gradient at {zero}'
    for n, p in model.named_parameters():
        assert torch.isfinite(p.grad).all(), n


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _under(name, prefixes):
    return any(name == p.rstrip('.') or name.startswith(p) for p in prefixes)


def _train_step(model, height, width, batch=2, seed=0):
    """One AdamW step (with weight decay) on a loss touching every output."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.05)
    outs = model(torch.randn(batch, 3, height, width))
    loss_on_all_outputs(outs).backward()
    opt.step()


def assert_frozen_stages(model, frozen_prefixes, height=64, width=64):
    """``model`` was built with frozen_stages >= 0; ``frozen_prefixes`` name the
    parameters/modules that must be frozen. In train mode (g = 0.5, so BatchNorm runs):
    frozen parameters have requires_grad False, frozen modules are in eval mode (also
    after another ``train()``), and one optimizer step changes neither their parameters
    nor their BN running statistics, while the rest of the model does train."""
    set_prepbn_g(model, 0.5)
    model.train()
    model.train()  # a second call (as runners do each epoch) must keep the freeze
    params = dict(model.named_parameters())
    frozen = {n for n in params if _under(n, frozen_prefixes)}
    assert frozen, f'nothing matches {frozen_prefixes}'
    assert all(not params[n].requires_grad for n in frozen)
    assert all(p.requires_grad for n, p in params.items() if n not in frozen)
    for name, m in model.named_modules():
        frozen_module = _under(name, frozen_prefixes)
        assert m.training != frozen_module, f'{name}: frozen={frozen_module}, training={m.training}'

    before = _snapshot(model)
    _train_step(model, height, width)
    after = model.state_dict()
    frozen_state = [k for k in before if _under(k, frozen_prefixes)]
    assert any('running_mean' in k for k in frozen_state), 'the frozen part should hold BN statistics'
    for k in frozen_state:
        assert torch.equal(before[k], after[k]), f'frozen {k} changed'
    # The check is not vacuous: the trainable part moved, statistics included.
    trainable_state = [k for k in before if not _under(k, frozen_prefixes)]
    for kind in ('running_mean', 'weight'):
        keys = [k for k in trainable_state if k.endswith(kind)]
        assert keys and all(not torch.equal(before[k], after[k]) for k in keys), kind


def estimate_bn_statistics(model, seed=0):
    """Give every BatchNorm running statistics other than the constructor's (as a loaded
    or recalibrated model has them)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


def assert_norm_eval(model, height=64, width=64):
    """``model`` was built with norm_eval=True: in train mode every BatchNorm (inside
    RepBN/PRepBN) stays in eval mode and its statistics do not move, while the
    parameters still train."""
    set_prepbn_g(model, 0.5)
    estimate_bn_statistics(model)
    model.train()
    bns = {n: m for n, m in model.named_modules() if isinstance(m, _BatchNorm)}
    assert bns and all(not m.training for m in bns.values())
    assert model.training
    before = _snapshot(model)
    _train_step(model, height, width)
    after = model.state_dict()
    stats = [k for k in before if k.rsplit('.', 1)[-1] in ('running_mean', 'running_var', 'num_batches_tracked')]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    assert all(not torch.equal(before[n], after[n]) for n, p in model.named_parameters())


def assert_checkpointing_equivalent(cfg, height, width, batch=2):
    """``with_cp=True`` gives the same outputs and gradients as ``with_cp=False``."""
    cfg = dict(cfg, drop_path_rate=0.0)
    plain, ckpt = build_backbone(dict(cfg, with_cp=False)), build_backbone(dict(cfg, with_cp=True))
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(batch, 3, height, width)
    results = []
    for model in (plain, ckpt):
        set_prepbn_g(model, 0.5)
        model.train()
        outs = model(x)
        loss_on_all_outputs(outs).backward()
        results.append(([o.detach() for o in outs], {n: p.grad for n, p in model.named_parameters()}))
    (outs_a, grads_a), (outs_b, grads_b) = results
    for a, b in zip(outs_a, outs_b):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for n in grads_a:
        torch.testing.assert_close(grads_b[n], grads_a[n], rtol=1e-4, atol=1e-6, msg=n)


def make_trained_state(cfg, height=64, width=64):
    """A backbone whose state differs from a fresh one everywhere that matters: random
    weights, g = 0.5 and BN statistics moved by two train-mode forwards."""
    model = build_backbone(cfg, seed=123)
    set_prepbn_g(model, 0.5)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(2, 3, height, width))
    return model.eval()


def eval_outputs(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def assert_same_outputs(model_a, model_b, x):
    for a, b in zip(eval_outputs(model_a, x), eval_outputs(model_b, x), strict=True):
        assert torch.equal(a, b)


def assert_state_dicts_equal(got, want):
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k


def assert_save_load_round_trip(cfg, tmp_path, height=64, width=64):
    """state_dict into a fresh model (strict) and from a saved file via
    ``init_cfg=dict(type='Pretrained')`` -- as a bare backbone state dict and as a
    detector checkpoint with ``backbone.`` prefixes: identical state and outputs."""
    source = make_trained_state(cfg, height, width)
    state = source.state_dict()
    x = torch.randn(1, 3, height, width)

    fresh = build_backbone(cfg, seed=7)
    fresh.load_state_dict(state, strict=True)
    assert_state_dicts_equal(fresh.state_dict(), state)
    assert_same_outputs(source, fresh, x)

    bare = tmp_path / 'backbone.pth'
    torch.save(state, bare)
    detector = tmp_path / 'detector.pth'
    torch.save({'meta': {'epoch': 12},
                'state_dict': {**{f'backbone.{k}': v for k, v in state.items()},
                               'neck.lateral_convs.0.conv.weight': torch.zeros(4, 4, 1, 1)}}, detector)
    for path in (bare, detector):
        loaded = build_backbone(dict(cfg, init_cfg=dict(type='Pretrained', checkpoint=str(path))), seed=7)
        assert_state_dicts_equal(loaded.state_dict(), state)
        assert_same_outputs(source, loaded, x)


def structured_grid_table(table, grid):
    """Fill a (1, h*w, C) table laid out on ``grid`` so that channel 0 is the row
    index and channel 1 the column index (the rest random)."""
    h, w = grid
    new = torch.randn_like(table).reshape(1, h, w, -1)
    new[..., 0] = torch.arange(h, dtype=table.dtype)[:, None]
    new[..., 1] = torch.arange(w, dtype=table.dtype)[None, :]
    return new.reshape(table.shape)


def assert_resized_grid_table(table, grid, src_size):
    """``table`` (1, h*w, C) is a 2-D resize of :func:`structured_grid_table` from a
    ``src_size`` x ``src_size`` grid: channel 0 depends on the row only, channel 1 on
    the column only, both increasing and spanning [0, src_size - 1] (bicubic may
    overshoot a little at the borders)."""
    h, w = grid
    t = table.reshape(h, w, -1)
    rows, cols = t[..., 0], t[..., 1]
    torch.testing.assert_close(rows, rows[:, :1].expand(h, w))
    torch.testing.assert_close(cols, cols[:1, :].expand(h, w))
    for line in (rows[:, 0], cols[0, :]):
        assert (line[1:] > line[:-1]).all()
        assert abs(line[0].item()) < 0.5 and abs(line[-1].item() - (src_size - 1)) < 0.5


def assert_invalid(cfg, match):
    """Building ``cfg`` raises a ValueError whose message matches ``match``."""
    with pytest.raises(ValueError, match=match):
        MODELS.build(dict(cfg))


def common_invalid_arguments(cfg):
    """(cfg, message pattern) pairs every SLAB backbone must refuse with a clear error."""
    return [
        (dict(cfg, arch='huge'), r"arch must be one of .*'tiny'.*got 'huge'"),
        (dict(cfg, attn_types='LLL'), r"attn_types needs one letter per stage \(4\).*'LLL'"),
        (dict(cfg, attn_types='LLLLL'), r"attn_types needs one letter per stage \(4\).*'LLLLL'"),
        (dict(cfg, attn_types='LLXS'), r"attn_types .*'L' \(SLA\) or 'S' \(softmax\), got 'LLXS'"),
        (dict(cfg, out_indices=(0, 4)), r'out_indices must be stage indices \(ints\) in \[0, 3\], got \(0, 4\)'),
        (dict(cfg, out_indices=(-1,)), r'out_indices must be stage indices \(ints\) in \[0, 3\]'),
        (dict(cfg, out_indices=()), r'out_indices must be stage indices'),
        (dict(cfg, out_indices=(0, 1.5)), r'out_indices must be stage indices \(ints\) .*got \(0, 1\.5\)'),
        (dict(cfg, out_indices=(1, 0)), r'out_indices must be increasing without repeats .*got \(1, 0\); '
                                        r'use \(0, 1\)'),
        (dict(cfg, out_indices=(0, 0, 2)), r'increasing without repeats .*use \(0, 2\)'),
        (dict(cfg, frozen_stages=5), r'frozen_stages must be an int in \[-1, 4\], got 5'),
        (dict(cfg, frozen_stages=-2), r'frozen_stages must be an int in \[-1, 4\], got -2'),
        (dict(cfg, frozen_stages=1.0), r'frozen_stages must be an int in \[-1, 4\], got 1\.0'),
        (dict(cfg, norm_cfg=dict(type='BN')), r"norm_cfg type 'BN' cannot normalise the \(B, N, C\) tokens .*"
                                              r"use one of PRepBN, RepBN, DyT, LN"),
        (dict(cfg, norm_cfg=dict(type='GN', num_groups=2)), r"norm_cfg type 'GN' cannot normalise"),
        (dict(cfg, norm_cfg=dict(type='SyncBN')), r"'SyncBN' cannot normalise .*convert_sync_batchnorm"),
        (dict(cfg, out_norm_cfg=dict(type='IN')), r"out_norm_cfg type 'IN' cannot normalise"),
        # Before 2026-12-05 this built, and every output was NaN.
        (dict(cfg, out_norm_cfg=dict(type='LN', eps=-1)), r'out_norm_cfg eps must be a number > 0 .*got -1'),
        (dict(cfg, norm_cfg=dict(type='LN', eps=0)), r'norm_cfg eps must be a number > 0 .*got 0'),
        (dict(cfg, kernel_size=4), r'kernel_size must be an odd int >= 1, got 4'),
        (dict(cfg, deploy=True, norm_cfg=dict(type='LN')),
         r"deploy=True .*\(one of PRepBN, RepBN, DyT\); norm_cfg type 'LN' cannot be folded"),
        (dict(cfg, out_norms_folded=True), r'out_norms_folded=True only makes sense with deploy=True'),
        (dict(cfg, init_cfg=dict(type='Kaiming')), r"init_cfg must be None or dict\(type='Pretrained'"),
        (dict(cfg, drop_path_rate=1.5), r'drop_path_rate must be a number in \[0, 1\) .*got 1\.5'),
        (dict(cfg, drop_path_rate=-0.1), r'drop_path_rate must be a number in \[0, 1\) .*got -0\.1'),
        (dict(cfg, drop_rate=1.0), r'drop_rate must be a probability in \[0, 1\), got 1\.0'),
        (dict(cfg, attn_drop_rate=-1), r'attn_drop_rate must be a probability in \[0, 1\), got -1'),
        (dict(cfg, in_channels=0), r'in_channels must be an int >= 1, got 0'),
        (dict(cfg, patch_size=0), r'patch_size must be an int >= 1, got 0'),
        (dict(cfg, patch_size=2.5), r'patch_size must be an int >= 1, got 2\.5'),
    ]


class OpSizeRecorder(TorchDispatchMode):
    """Records the number of elements of every tensor that every aten op produces
    (forward and backward), to bound the intermediates of a computation."""

    def __init__(self):
        super().__init__()
        self.records = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.records.append((t.numel(), str(func), tuple(t.shape)))
        return out

    def largest(self):
        return max(self.records)


def largest_intermediate(module, *inputs):
    """The largest tensor (numel, op, shape) that any op makes in a forward and
    backward pass of ``module(*inputs)`` (summed output as the loss)."""
    inputs[0].requires_grad_()
    with OpSizeRecorder() as rec:
        module(*inputs).sum().backward()
    assert any('backward' in op for _, op, _ in rec.records), 'the backward pass was not recorded'
    return rec.largest()
