"""RepBN / PRepBN numerics against hand-written formulas, Lemma 4.1, and mmdet backbones built with PRepBN."""
import pytest
import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer

from slab_mmdet.models.layers import PRepBN, RepBN, iter_prepbn, repbn_affine, repbn_to_bn_params


# These models are tiny: one thread is much faster than two on the shared 2-core machine.
pytestmark = pytest.mark.usefixtures('one_torch_thread')


C = 8


def tokens(seed, shape=(3, 5, C)):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen) * 1.5 + torch.linspace(-1, 2, shape[-1])


def randomise_repbn(repbn, seed, stats=True):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        repbn.alpha.fill_(0.7)
        repbn.bn.weight.copy_(torch.rand(C, generator=gen) + 0.5)
        repbn.bn.bias.copy_(torch.randn(C, generator=gen))
        if stats:
            repbn.bn.running_mean.copy_(torch.randn(C, generator=gen))
            repbn.bn.running_var.copy_(torch.rand(C, generator=gen) * 2 + 0.2)


def randomise_prepbn(m, seed):
    randomise_repbn(m.repbn, seed)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        m.ln.weight.copy_(torch.rand(C, generator=gen) + 0.5)
        m.ln.bias.copy_(torch.randn(C, generator=gen))


def hand_bn(x, mean, var, weight, bias, eps):
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def hand_repbn(x, repbn, train):
    """BN over batch x tokens (dims 0, 1) + alpha * x, in train (batch stats) or eval (running stats) mode."""
    bn = repbn.bn
    if train:
        mean, var = x.mean(dim=(0, 1)), x.var(dim=(0, 1), unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    return hand_bn(x, mean, var, bn.weight, bn.bias, bn.eps) + repbn.alpha * x


def hand_ln(x, ln):
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


# --------------------------------------------------------------------------- RepBN
def test_repbn_train_mode_and_running_stats():
    m = RepBN(C)
    randomise_repbn(m, 0, stats=False)
    x = tokens(1)
    with torch.no_grad():
        expected = hand_repbn(x, m, train=True)
    m.train()
    torch.testing.assert_close(m(x), expected)
    # Running stats: momentum 0.1 from (0, 1), with the unbiased variance over the 15 rows.
    torch.testing.assert_close(m.bn.running_mean, 0.1 * x.mean(dim=(0, 1)))
    torch.testing.assert_close(m.bn.running_var, 0.9 + 0.1 * x.var(dim=(0, 1), unbiased=True))
    assert int(m.bn.num_batches_tracked) == 1


def test_repbn_eval_mode_uses_running_stats():
    m = RepBN(C)
    randomise_repbn(m, 2)
    m.eval()
    x = tokens(3, shape=(2, 7, C))
    stats = m.bn.running_mean.clone(), m.bn.running_var.clone()
    with torch.no_grad():
        torch.testing.assert_close(m(x), hand_repbn(x, m, train=False))
    torch.testing.assert_close(m.bn.running_mean, stats[0])
    torch.testing.assert_close(m.bn.running_var, stats[1])
    assert m.alpha.shape == (1,)
    assert RepBN(C).alpha.item() == 1.0  # initialised to 1


# --------------------------------------------------------------------------- PRepBN
@pytest.mark.parametrize('g', [0.0, 0.3, 1.0])
@pytest.mark.parametrize('train', [True, False])
def test_prepbn_equals_mix_of_ln_and_repbn(g, train):
    m = PRepBN(C)
    randomise_prepbn(m, 4)
    m.set_g(g)
    m.train(train)
    x = tokens(5)
    with torch.no_grad():
        expected = g * hand_ln(x, m.ln) + (1 - g) * hand_repbn(x, m.repbn, train)
    torch.testing.assert_close(m(x), expected)


def count_calls(module):
    calls = []
    module.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_prepbn_g0_runs_no_layernorm_and_g1_no_batchnorm():
    m = PRepBN(C).train()
    ln_calls, bn_calls = count_calls(m.ln), count_calls(m.repbn.bn)
    m.set_g(0.0)
    m(tokens(6))
    assert (len(ln_calls), len(bn_calls)) == (0, 1)
    m.set_g(1.0)
    mean, var, count = m.repbn.bn.running_mean.clone(), m.repbn.bn.running_var.clone(), int(
        m.repbn.bn.num_batches_tracked)
    m(tokens(7))
    assert (len(ln_calls), len(bn_calls)) == (1, 1)
    assert torch.equal(m.repbn.bn.running_mean, mean) and torch.equal(m.repbn.bn.running_var, var)
    assert int(m.repbn.bn.num_batches_tracked) == count
    m.set_g(0.5)
    m(tokens(8))
    assert (len(ln_calls), len(bn_calls)) == (2, 2)


def test_prepbn_g_buffer_round_trips_through_state_dict():
    m = PRepBN(C)
    assert m.g_value == 1.0 and float(m.g) == 1.0
    randomise_prepbn(m, 9)
    m.set_g(0.25)
    assert float(m.g) == 0.25 and m.g_value == 0.25
    state = nn.Sequential(m).state_dict()
    assert '0.g' in state and [n for n, _ in m.named_buffers()].count('g') == 1
    fresh = nn.Sequential(PRepBN(C))
    fresh.load_state_dict(state)
    assert fresh[0].g_value == 0.25 and float(fresh[0].g) == 0.25
    assert 'g=0.25' in repr(fresh[0])
    x = tokens(10)
    m.eval(), fresh.eval()
    torch.testing.assert_close(fresh(x), m(x))


@pytest.mark.parametrize('bad', [-0.1, 1.5, float('nan')])
def test_set_g_rejects_values_outside_unit_interval(bad):
    m = PRepBN(C)
    with pytest.raises(ValueError, match=r'g must be a number in \[0, 1\]'):
        m.set_g(bad)
    assert m.g_value == 1.0 and float(m.g) == 1.0


@pytest.mark.parametrize('bad', [-0.2, 1.5, float('nan'), float('inf')])
def test_loading_a_state_dict_with_g_outside_unit_interval_is_an_error(bad):
    model = nn.Sequential(PRepBN(C))
    state = model.state_dict()
    state['0.g'] = torch.tensor(bad)
    with pytest.raises(ValueError, match=rf'0\.g in the state dict: g must be a number in \[0, 1\] .*got {bad}'):
        model.load_state_dict(state)
    assert model[0].g_value == 1.0


def test_writing_the_g_buffer_takes_effect_in_forward():
    """g has one home, the buffer: writing it in any way (as EMA and parameter swaps do,
    through .data) changes what forward computes."""
    m = PRepBN(C)
    randomise_prepbn(m, 3)
    m.eval()
    x = tokens(4)
    m.g.data.fill_(0.0)
    torch.testing.assert_close(m(x), m.repbn(x))
    m.g.copy_(torch.tensor(0.5))
    torch.testing.assert_close(m(x), 0.5 * m.ln(x) + 0.5 * m.repbn(x))


# --------------------------------------------------------------------------- Lemma 4.1
def test_lemma_4_1_repbn_is_a_batchnorm_in_eval_mode():
    m = RepBN(C)
    randomise_repbn(m, 11)
    with torch.no_grad():
        m.alpha.fill_(-0.45)  # alpha != 1
    m.eval()
    weight, bias = repbn_to_bn_params(m)
    bn = nn.BatchNorm1d(C, eps=m.bn.eps).eval()
    with torch.no_grad():
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
        bn.running_mean.copy_(m.bn.running_mean)
        bn.running_var.copy_(m.bn.running_var)
    x = tokens(12)
    with torch.no_grad():
        expected = m(x)
        torch.testing.assert_close(bn(x.reshape(-1, C)).reshape(x.shape), expected)
        # The closed forms, written out: weight = gamma + alpha sigma, bias = beta + alpha mu.
        sigma = torch.sqrt(m.bn.running_var + m.bn.eps)
        torch.testing.assert_close(weight, m.bn.weight - 0.45 * sigma)
        torch.testing.assert_close(bias, m.bn.bias - 0.45 * m.bn.running_mean)
        scale, shift = repbn_affine(m)
        torch.testing.assert_close(x * scale + shift, expected)
        torch.testing.assert_close(scale, m.bn.weight / sigma - 0.45)
        torch.testing.assert_close(shift, m.bn.bias - m.bn.weight * m.bn.running_mean / sigma)


# --------------------------------------------------------------------------- registry and mmdet backbones
def test_build_norm_layer():
    name, layer = build_norm_layer(dict(type='PRepBN'), 16)
    assert isinstance(layer, PRepBN) and name == 'prepbn'
    assert layer.ln.eps == 1e-5 and layer.repbn.bn.eps == 1e-5  # build_norm_layer's default eps
    _, layer = build_norm_layer(dict(type='PRepBN', eps=1e-6), 16, postfix=2)
    assert layer.ln.eps == 1e-6 and layer.ln.normalized_shape == (16,)
    name, layer = build_norm_layer(dict(type='RepBN'), 16, postfix=1)
    assert isinstance(layer, RepBN) and name == 'repbn1' and layer.bn.num_features == 16
    assert PRepBN(16).ln.eps == 1e-6  # the class default (reference SLAB-PVT)


def pvt():
    from mmdet.models.backbones import PyramidVisionTransformer
    return PyramidVisionTransformer(embed_dims=8, num_layers=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                                    mlp_ratios=[2, 2, 2, 2], drop_path_rate=0.0, norm_cfg=dict(type='PRepBN'))


def swin():
    from mmdet.models.backbones import SwinTransformer
    return SwinTransformer(embed_dims=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 1, 1), window_size=2, mlp_ratio=2,
                           drop_path_rate=0.0, norm_cfg=dict(type='PRepBN'))


def branch_params(m):
    return {'ln': list(m.ln.parameters()), 'bn': list(m.repbn.parameters())}


@pytest.mark.parametrize('build', [pvt, swin], ids=['pvt', 'swin'])
def test_mmdet_backbone_builds_and_trains_with_prepbn(build):
    torch.manual_seed(0)
    model = build()
    model.init_weights()
    norms = list(iter_prepbn(model))
    assert len(norms) >= 8
    x = torch.randn(2, 3, 64, 64)

    def backward(g):
        for _, m in norms:
            m.set_g(g)
        model.zero_grad(set_to_none=True)
        loss = sum((out ** 2).mean() for out in model(x))
        loss.backward()
        return loss

    # Every PRepBN gets gradients on the branches that run: LN only at g = 1, BN only at g = 0, both between.
    for g, used in ((1.0, {'ln'}), (0.0, {'bn'}), (0.5, {'ln', 'bn'})):
        assert torch.isfinite(backward(g))
        for name, m in norms:
            for branch, params in branch_params(m).items():
                for p in params:
                    if branch in used:
                        assert p.grad is not None and p.grad.abs().sum() > 0, (g, name, branch)
                    else:
                        assert p.grad is None, (g, name, branch)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        losses.append(backward(0.5).item())
        optimizer.step()
    for name, m in norms:
        for p_name, p in m.named_parameters():
            assert not torch.equal(p, before[f'{name}.{p_name}']), f'{name}.{p_name} did not change'
    assert all(torch.isfinite(torch.tensor(losses)))


# --- per-image statistics (stats='image') --------------------------------------------------


def test_per_image_stats_normalise_each_image_by_its_own_tokens():
    m = RepBN(C, stats='image').train()
    randomise_repbn(m, 0, stats=False)
    x = tokens(1, shape=(3, 7, C))
    x[1] *= 40.0   # one image at a very different scale must not change the others
    out = m(x)
    for i in range(3):
        xi = x[i:i + 1]
        expected = hand_bn(xi, xi.mean(dim=(0, 1)), xi.var(dim=(0, 1), unbiased=False), m.bn.weight, m.bn.bias,
                           m.bn.eps) + m.alpha * xi
        torch.testing.assert_close(out[i:i + 1], expected)


def test_per_image_stats_equal_batch_stats_for_one_image_and_update_running_stats_per_image():
    image, batch = RepBN(C, stats='image').train(), RepBN(C, stats='batch').train()
    x = tokens(2, shape=(1, 9, C))
    torch.testing.assert_close(image(x), batch(x))
    torch.testing.assert_close(image.bn.running_mean, batch.bn.running_mean)
    torch.testing.assert_close(image.bn.running_var, batch.bn.running_var)
    # Two images: the running statistics move by the mean of the per-image statistics.
    m = RepBN(C, stats='image', momentum=None).train()
    x = tokens(3, shape=(2, 9, C))
    m(x)
    torch.testing.assert_close(m.bn.running_mean, x.mean(dim=1).mean(dim=0))
    torch.testing.assert_close(m.bn.running_var, x.var(dim=1, unbiased=True).mean(dim=0))
    assert int(m.bn.num_batches_tracked) == 1


def test_per_image_stats_change_nothing_in_eval_mode():
    image, batch = RepBN(C, stats='image'), RepBN(C)
    randomise_repbn(batch, 4)
    image.load_state_dict(batch.state_dict())
    x = tokens(5, shape=(2, 6, C))
    torch.testing.assert_close(image.eval()(x), batch.eval()(x))
    torch.testing.assert_close(repbn_affine(image)[0], repbn_affine(batch)[0])


def test_stats_option_is_checked_and_reaches_prepbn_through_norm_cfg():
    with pytest.raises(ValueError, match=r"stats must be one of \('batch', 'image'\), got 'images'"):
        RepBN(C, stats='images')
    norm = build_norm_layer(dict(type='PRepBN', stats='image'), C)[1]
    assert norm.repbn.stats == 'image'


# --- the anneal's failure at detection batch sizes (docs/prepbn.md) --------------------------


@pytest.mark.parametrize('alpha_init, grows', [(1.0, True), (0.0, False)])
def test_repbn_identity_path_passes_the_residual_stream_scale_into_the_sublayers(alpha_init, grows):
    """What ran away: with alpha = 1 (the reference's init) a RepBN passes the residual
    stream's scale on (``alpha * x``), so as g falls the sublayers see a stream that their
    own outputs enlarge, and the deepest stage's stream grew ~100x in 100 iterations at
    2 images per batch. A LayerNorm, and a RepBN starting at alpha = 0 (what the detection
    configs use), hand the sublayers the same RMS whatever the stream's scale."""
    m = PRepBN(C, alpha_init=alpha_init).train()
    m.set_g(0.0)
    x = tokens(7, shape=(2, 50, C))
    rms = [float(m(scale * x).pow(2).mean().sqrt()) for scale in (1.0, 10.0, 100.0)]
    if grows:
        assert rms[1] > 5 * rms[0] and rms[2] > 5 * rms[1]
    else:
        assert rms == pytest.approx([rms[0]] * 3, rel=1e-3)
    m.set_g(1.0)   # LayerNorm: scale-invariant
    ln = [float(m(scale * x).pow(2).mean().sqrt()) for scale in (1.0, 10.0, 100.0)]
    assert ln == pytest.approx([ln[0]] * 3, rel=1e-3)


def test_alpha_init_is_checked():
    with pytest.raises(ValueError, match=r"alpha_init must be a finite number, got nan"):
        RepBN(C, alpha_init=float('nan'))
    assert float(PRepBN(C, alpha_init=0.0).repbn.alpha) == 0.0 and float(RepBN(C).alpha) == 1.0


# --- mixed precision (autocast) -------------------------------------------------------------
def autocast_forward(module, x, dtype):
    """``module(linear(x))`` under CPU autocast, as in a backbone: the norm reads a matmul's
    half-precision output. Returns (input to the norm, output, LayerNorm's output on it)."""
    linear = nn.Linear(C, C)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(C))
        linear.bias.zero_()
    with torch.autocast('cpu', dtype=dtype):
        y = linear(x)
        out = module(y)
        ln_dtype = nn.functional.layer_norm(y, (C,), torch.ones(C), torch.zeros(C)).dtype
    return y, out, ln_dtype


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('train', [True, False])
@pytest.mark.parametrize('g', [1.0, 0.5, 0.0])
def test_prepbn_runs_under_autocast_in_layernorms_dtype_at_every_g(g, train, dtype):
    m = PRepBN(C)
    randomise_prepbn(m, 4)
    m.set_g(g)
    m.train(train)
    x = tokens(5).requires_grad_()
    y, out, ln_dtype = autocast_forward(m, x, dtype)
    # The dtype autocast gives a LayerNorm, at every g (the blend used to fail at 0 < g < 1).
    assert out.dtype == ln_dtype == y.dtype
    # The same numbers as in float32 on the same (rounded) input, within half precision.
    reference = PRepBN(C)
    reference.load_state_dict(m.state_dict())
    reference.train(train)
    expected = reference(y.detach().float())
    torch.testing.assert_close(out.float(), expected, atol=0.05 * float(expected.abs().max()), rtol=0.05)
    out.float().square().sum().backward()
    used = [p for p in ((m.ln.weight,) if g > 0 else ()) + ((m.repbn.alpha, m.repbn.bn.weight) if g < 1 else ())]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in used)
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize('stats', ['batch', 'image'])
def test_repbn_under_autocast_returns_layernorms_dtype(stats):
    m = RepBN(C, stats=stats)
    randomise_repbn(m, 6)
    y, out, ln_dtype = autocast_forward(m, tokens(7), torch.bfloat16)
    assert out.dtype == ln_dtype
    assert torch.isfinite(out).all()


def test_norms_keep_their_dtype_outside_autocast():
    """No cast without autocast: a float64 model (the fusion tests) and a bf16 model stay so."""
    for dtype in (torch.float64, torch.bfloat16):
        m = PRepBN(C).to(dtype)
        m.set_g(0.5)
        assert m(tokens(8).to(dtype)).dtype == dtype


@pytest.mark.parametrize('build, message', [
    (lambda: PRepBN(C, eps=-1), r'PRepBN: eps must be a number > 0 .*got -1'),
    (lambda: PRepBN(C, eps=0.0), r'PRepBN: eps must be a number > 0 .*got 0\.0'),
    (lambda: PRepBN(C, bn_eps=float('nan')), r'PRepBN: bn_eps must be a number > 0 .*got nan'),
    (lambda: RepBN(C, eps=-1e-5), r'RepBN: eps must be a number > 0 .*got -1e-05'),
    (lambda: RepBN(C, momentum=1.5), r'RepBN: momentum must be a number in \(0, 1\] or None .*got 1\.5'),
    (lambda: PRepBN(0), r'PRepBN: num_features must be an int >= 1, got 0'),
])
def test_arguments_that_can_only_be_wrong_are_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()
    RepBN(C, momentum=None)   # a cumulative average is valid


def test_a_norm_cfg_that_is_not_a_dict_is_refused_by_name():
    from testing_utils.backbone_utils import PVT_MINI, assert_invalid
    assert_invalid(dict(PVT_MINI, out_norm_cfg='LN'), r"out_norm_cfg must be a dict such as dict\(type='PRepBN'\), "
                                                      r"got 'LN' \(str\); valid types: PRepBN, RepBN, DyT, LN")
