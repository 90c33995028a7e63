"""SLAB-Swin (SLABSwinTransformer) as a detection backbone: any input size, every
attention mix, shifted windows that never leak padding or wrapped tokens into real
tokens (in SLA, its depth-wise conv on V, and softmax attention), gradients,
pretrained positional tables, argument checking, and SLA's linear memory. The mmdet
conventions both backbones keep are in test_backbone_conventions.py.

Fidelity to the authors' classification model at 224x224 is in
test_reference_fidelity.py; most tests here use a small arch for speed.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from slab_mmdet.models.layers import window_attention
from slab_mmdet.models.layers.transformer import pad_to_multiple
from slab_mmdet.models.layers.window_attention import (ShiftedWindowAttention, WindowLinearAttention,
                                                       WindowSoftmaxAttention)
from testing_utils.backbone_utils import (SWIN_MINI, SWIN_MINI_ARCH, assert_gradients_reach_every_parameter,
                                          assert_invalid, assert_resized_grid_table, build_backbone, check_outputs,
                                          common_invalid_arguments, eval_outputs, largest_intermediate,
                                          structured_grid_table)

MINI_ARCH, MINI = SWIN_MINI_ARCH, SWIN_MINI

ATTENTION_MIXES = {
    'slab': dict(attn_types='LLSS'),  # the default windows (56, 28, 7, 7)
    'softmax': dict(attn_types='SSSS', window_sizes=(7, 7, 7, 7)),
    'sla': dict(attn_types='LLLL', window_sizes=(7, 7, 7, 7)),
}
SIZES = [
    (32, 32),    # every map smaller than its window: padding, no shift
    (33, 47),
    (224, 224),  # the classification size: 56 and 28 maps are one window each
    (300, 452),  # maps 75x113, 38x57, 19x29, 10x15: padding and shift at every stage (window 7)
    (333, 517),
]


@pytest.mark.parametrize('size', SIZES, ids=lambda s: f'{s[0]}x{s[1]}')
@pytest.mark.parametrize('mix', ATTENTION_MIXES)
def test_outputs_at_strides_4_to_32_for_any_input_size(mix, size):
    check_outputs(build_backbone(dict(MINI, **ATTENTION_MIXES[mix])), *size, batch=2)


def test_real_tiny_model_at_detection_size():
    outs = check_outputs(build_backbone(dict(type='SLABSwinTransformer', arch='tiny')), 800, 1216)
    assert [o.shape[1] for o in outs] == [96, 192, 384, 768]


def test_stage_attentions_and_shifts_follow_the_config():
    model = build_backbone(dict(MINI, attn_types='LSLS', window_sizes=(8, 6, 4, 3)))
    for i, stage in enumerate(model.stages):
        ws = model.window_sizes[i]
        for j, block in enumerate(stage.blocks):
            attn = block.attn
            assert isinstance(attn.window_attn, WindowLinearAttention if i % 2 == 0 else WindowSoftmaxAttention)
            assert attn.window_size == ws
            assert attn.shift_size == (ws // 2 if j % 2 else 0)
        assert (stage.downsample is None) == (i == 3)


# --- shifted windows: padding and wrapped tokens never reach real tokens --------------------
def make_window_attention(kind, shift, dims=16, heads=2, ws=7, seed=0):
    """A ShiftedWindowAttention with random weights everywhere (positional tables too)."""
    torch.manual_seed(seed)
    inner = (WindowLinearAttention if kind == 'L' else WindowSoftmaxAttention)(dims, heads, ws)
    with torch.no_grad():
        for name, p in inner.named_parameters():
            if name in ('positional_encoding', 'relative_position_bias_table'):
                p.normal_()
    return ShiftedWindowAttention(inner, shift_size=shift).eval()


def run_on_grid(attn, x):
    """(B, H, W, C) through ``attn`` -> (B, H, W, C)."""
    b, h, w, c = x.shape
    with torch.no_grad():
        return attn(x.reshape(b, h * w, c), (h, w)).reshape(b, h, w, c)


class NoisyPadding:
    """``pad_to_multiple`` with the padding filled with large random values instead of zeros."""

    def __init__(self, scale=100.0):
        self.scale, self.padded_calls = scale, 0

    def __call__(self, x, multiple, channels_last=True):
        assert channels_last
        padded, pad = pad_to_multiple(x, multiple, channels_last)
        if any(pad):
            self.padded_calls += 1
            real = torch.zeros(padded.shape[:3] + (1,), dtype=torch.bool)
            real[:, :x.shape[1], :x.shape[2]] = True
            padded = torch.where(real, padded, self.scale * torch.randn_like(padded))
        return padded, pad


def take_the_traced_path(monkeypatch):
    """Run the attentions' ONNX path (pad and mask: the bands would depend on the size) in eager mode."""
    monkeypatch.setattr(torch.jit, 'is_tracing', lambda: True)


@pytest.mark.parametrize('hw', [(10, 12), (19, 20), (5, 9), (3, 4)], ids=lambda s: f'{s[0]}x{s[1]}')
@pytest.mark.parametrize('shift', [0, 3])
@pytest.mark.parametrize('kind', ['L', 'S'])
@pytest.mark.parametrize('path', ['bands', 'traced'])
def test_padded_tokens_never_reach_real_tokens(path, kind, shift, hw, monkeypatch):
    """A real token's output does not change when the padded region's values are
    perturbed inside the block (SLA, its conv on V, and softmax alike) on the traced
    path, which pads; band by band (PyTorch) both attentions pad nothing at all, and
    the two paths agree."""
    attn = make_window_attention(kind, shift)
    x = torch.randn(2, *hw, 16)
    want = run_on_grid(attn, x)
    noisy = NoisyPadding()
    monkeypatch.setattr(window_attention, 'pad_to_multiple', noisy)
    if path == 'traced':
        take_the_traced_path(monkeypatch)
    got = run_on_grid(attn, x)
    assert noisy.padded_calls == (1 if path == 'traced' else 0)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize('hw', [(14, 14), (19, 20), (12, 26)], ids=lambda s: f'{s[0]}x{s[1]}')
@pytest.mark.parametrize('kind', ['L', 'S'])
def test_wrapped_tokens_never_reach_tokens_they_are_not_next_to(kind, hw):
    """The cyclic shift wraps the first `shift` rows (columns) to the bottom (right),
    into windows with the last real rows (columns). Perturbing those first rows
    (columns) must change no output outside them: with shifted windows they share a
    window with no token they are spatially next to."""
    ws, shift = 7, 3
    h, w = hw
    hp, wp = math.ceil(h / ws) * ws, math.ceil(w / ws) * ws
    # Not vacuous: the wrapped rows/columns share their window with real tokens.
    assert h > hp - ws + shift and w > wp - ws + shift
    attn = make_window_attention(kind, shift)
    torch.manual_seed(1)
    x = torch.randn(1, h, w, 16)
    base = run_on_grid(attn, x)
    for dim in (1, 2):
        perturbed = x.clone()
        perturbed.narrow(dim, 0, shift).add_(5 * torch.randn_like(perturbed.narrow(dim, 0, shift)))
        out = run_on_grid(attn, perturbed)
        torch.testing.assert_close(out.narrow(dim, shift, out.shape[dim] - shift),
                                   base.narrow(dim, shift, out.shape[dim] - shift))
        assert not torch.allclose(out.narrow(dim, 0, shift), base.narrow(dim, 0, shift))


@pytest.mark.parametrize('path', ['bands', 'traced'])
def test_backbone_outputs_ignore_window_padding(path, monkeypatch):
    """Through a whole SLAB-Swin (both attentions, padding and shifts at every stage; band
    by band nothing is padded)."""
    model = build_backbone(dict(MINI, attn_types='LSLS', window_sizes=(7, 7, 7, 7)))
    x = torch.randn(1, 3, 300, 452)
    want = eval_outputs(model, x)
    noisy = NoisyPadding()
    monkeypatch.setattr(window_attention, 'pad_to_multiple', noisy)
    if path == 'traced':
        take_the_traced_path(monkeypatch)
    got = eval_outputs(model, x)
    assert noisy.padded_calls == (8 if path == 'traced' else 0)  # traced: every block of every stage
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def sla_region_by_region(sla, x, shift):
    """The oracle for SLA in shifted windows, from the definition: the map (B, H, W, C) is
    cut into regions at rows and columns ``shift + k * ws`` (``k * ws`` unshifted), which
    are the parts of Swin's cyclically shifted windows; each region attends only to itself,
    its tokens keep their in-window positions (row, column minus ``shift``, modulo ws) for
    the positional encoding, and the conv on V sees the region alone in a zero window."""
    b, h, w, c = x.shape
    ws, heads = sla.window_size, sla.num_heads

    def cuts(size):
        points = sorted({0, size} | {p for p in range(shift % ws, size, ws)})
        return list(zip(points[:-1], points[1:]))

    out = torch.zeros(b, h, w, c, dtype=x.dtype)
    for r0, r1 in cuts(h):
        for c0, c1 in cuts(w):
            part = x[:, r0:r1, c0:c1]
            q, k, v = sla.qkv(part).chunk(3, dim=-1)                       # (B, hr, wr, C)
            i0, j0 = (r0 - shift) % ws, (c0 - shift) % ws
            pos = sla.positional_encoding.view(ws, ws, c)[i0:i0 + r1 - r0, j0:j0 + c1 - c0]
            q, k = torch.relu(q), torch.relu(k + pos)
            q, k, v = (t.reshape(b, -1, heads, c // heads).transpose(1, 2) for t in (q, k, v))
            attended = (q @ (k.transpose(-2, -1) @ v)) / (q @ k.sum(-2, keepdim=True).transpose(-2, -1) + 1e-6)
            window = torch.zeros(b, heads, ws, ws, c // heads, dtype=x.dtype)
            window[:, :, i0:i0 + r1 - r0, j0:j0 + c1 - c0] = v.reshape(b, heads, r1 - r0, c1 - c0, -1)
            # The kernel of head channel j, applied to channel j of every head.
            conv = F.conv2d(window.flatten(0, 1).permute(0, 3, 1, 2), sla.value_conv.dwc.weight,
                            sla.value_conv.dwc.bias, padding=sla.value_conv.dwc.padding,
                            groups=c // heads).permute(0, 2, 3, 1).reshape(b, heads, ws, ws, -1)
            conv = conv[:, :, i0:i0 + r1 - r0, j0:j0 + c1 - c0].flatten(2, 3)
            merged = (attended + conv).transpose(1, 2).reshape(b, r1 - r0, c1 - c0, c)
            out[:, r0:r1, c0:c1] = sla.proj(merged)
    return out


@pytest.mark.parametrize('hw', [(10, 12), (14, 14), (19, 20), (5, 9), (30, 8)], ids=lambda s: f'{s[0]}x{s[1]}')
@pytest.mark.parametrize('shift', [0, 3])
def test_window_sla_is_sla_on_each_region_alone(shift, hw):
    """SLA's mask-free shifted windows (bands of regular windows cut at the map's edge)
    equal SLA applied to each part of the shifted windows separately, in float64."""
    attn = make_window_attention('L', shift).double()
    torch.manual_seed(2)
    x = torch.randn(2, *hw, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(attn.window_attn(x, shift), sla_region_by_region(attn.window_attn, x, shift),
                                   rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('hw', [(10, 12), (19, 20), (30, 8)], ids=lambda s: f'{s[0]}x{s[1]}')
@pytest.mark.parametrize('shift', [0, 3])
@pytest.mark.parametrize('kind', ['L', 'S'])
def test_window_attention_assembles_the_same_output_with_and_without_autograd(kind, shift, hw):
    """Under autograd the bands' outputs are concatenated, in inference written in place
    (with windows cut at the map's edge in every case); both give the same map, and
    the gradient reaches every input token."""
    attn = make_window_attention(kind, shift).double()
    torch.manual_seed(3)
    x = torch.randn(2, *hw, 16, dtype=torch.float64, requires_grad=True)
    trained = attn.window_attn(x, shift)
    with torch.no_grad():
        inferred = attn.window_attn(x, shift)
    torch.testing.assert_close(trained, inferred, rtol=1e-12, atol=1e-12)
    trained.square().sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad.abs().sum(-1) > 0).all()


@pytest.mark.parametrize('hw', [(7, 7), (5, 6), (1, 2)], ids=lambda s: f'{s[0]}x{s[1]}')
@pytest.mark.parametrize('kind', ['L', 'S'])
def test_no_shift_when_one_window_covers_the_map(kind, hw):
    shifted = make_window_attention(kind, shift=3)
    regular = ShiftedWindowAttention(shifted.window_attn, shift_size=0)
    x = torch.randn(2, *hw, 16)
    assert torch.equal(run_on_grid(shifted, x), run_on_grid(regular, x))


@pytest.mark.parametrize('hw', [(7, 9), (14, 14)], ids=lambda s: f'{s[0]}x{s[1]}')
@pytest.mark.parametrize('kind', ['L', 'S'])
def test_shift_applies_when_the_map_spans_several_windows(kind, hw):
    shifted = make_window_attention(kind, shift=3)
    regular = ShiftedWindowAttention(shifted.window_attn, shift_size=0)
    x = torch.randn(2, *hw, 16)
    assert not torch.allclose(run_on_grid(shifted, x), run_on_grid(regular, x))


@pytest.mark.parametrize('shift', [0, 3])
def test_softmax_windows_match_mmdet_swin_where_no_padding_is_needed(shift):
    from mmdet.models.backbones.swin import ShiftWindowMSA
    ours = make_window_attention('S', shift)
    theirs = ShiftWindowMSA(16, 2, 7, shift_size=shift).eval()
    for name in ('qkv', 'proj'):
        getattr(theirs.w_msa, name).load_state_dict(getattr(ours.window_attn, name).state_dict())
    with torch.no_grad():
        theirs.w_msa.relative_position_bias_table.copy_(ours.window_attn.relative_position_bias_table)
    x = torch.randn(2, 14 * 21, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, (14, 21)), theirs(x, (14, 21)))


def test_shift_must_be_smaller_than_the_window():
    with pytest.raises(ValueError, match=r'shift_size must be in \[0, window_size=7\), got 7'):
        ShiftedWindowAttention(WindowLinearAttention(16, 2, 7), shift_size=7)


# --- training behaviour and weights ----------------------------------------------------------
@pytest.mark.parametrize('mix', ATTENTION_MIXES)
def test_gradients_reach_every_parameter(mix):
    assert_gradients_reach_every_parameter(build_backbone(dict(MINI, **ATTENTION_MIXES[mix])), 100, 148)



def swin_grid_tables(model):
    """(name, table as (1, n, C), grid) of every positional table of ``model``:
    SLA's per-window positional encodings and softmax's relative position bias tables."""
    tables = []
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(stage.blocks):
            inner, ws = block.attn.window_attn, block.attn.window_size
            if isinstance(inner, WindowLinearAttention):
                tables.append((f'{i}.{j}.positional_encoding', inner.positional_encoding, (ws, ws)))
            else:
                table = inner.relative_position_bias_table.unsqueeze(0)
                tables.append((f'{i}.{j}.relative_position_bias_table', table, (2 * ws - 1,) * 2))
    return tables


def test_pretrained_positional_tables_are_resized_to_other_window_sizes(tmp_path):
    cfg = dict(MINI, attn_types='LLSS')
    source = build_backbone(dict(cfg, window_sizes=(8, 8, 4, 4)))
    with torch.no_grad():
        for _, table, grid in swin_grid_tables(source):
            table.copy_(structured_grid_table(table, grid))
    path = tmp_path / 'swin_w8.pth'
    torch.save(source.state_dict(), path)

    model = build_backbone(dict(cfg, window_sizes=(7, 7, 7, 7), init_cfg=dict(type='Pretrained', checkpoint=str(path))))
    source_grids = {name: grid for name, _, grid in swin_grid_tables(source)}
    for name, table, grid in swin_grid_tables(model):
        assert grid == ((7, 7) if 'positional_encoding' in name else (13, 13))
        assert table.shape == (1, grid[0] * grid[1], table.shape[-1])
        assert_resized_grid_table(table.detach(), grid, source_grids[name][0])
    own, src = model.state_dict(), source.state_dict()
    for key in src:
        if key.rsplit('.', 1)[-1] not in ('positional_encoding', 'relative_position_bias_table'):
            assert torch.equal(own[key], src[key]), key
    check_outputs(model, 96, 160)


def test_invalid_arguments_are_refused():
    cases = common_invalid_arguments(MINI) + [
        (dict(MINI, window_sizes=(7, 7, 7)), r'window_sizes needs 4 positive integers, got \(7, 7, 7\)'),
        (dict(MINI, window_sizes=(7, 0, 7, 7)), r'window_sizes needs 4 positive integers'),
        (dict(MINI, arch=dict(MINI_ARCH, depths=(2, 2, 2))), r'depths and num_heads of equal length'),
        (dict(MINI, arch=dict(MINI_ARCH, mlp_ratio=4)), r'exactly the keys'),
        (dict(MINI, arch=dict(MINI_ARCH, num_heads=(3, 2, 2, 4))), r'embed_dims 16 is not divisible by num_heads 3'),
        (dict(MINI, mlp_ratio=0), r'mlp_ratio must be a number > 0, got 0'),
    ]
    for cfg, match in cases:
        assert_invalid(cfg, match)


# --- memory --------------------------------------------------------------------------------
@pytest.mark.parametrize('hw, shift', [((48, 48), 0), ((75, 80), 24)], ids=['one-window', 'padded-shifted'])
def test_window_sla_never_forms_an_attention_matrix(hw, shift):
    """Windows of N = 48x48 tokens: SLA's largest intermediate (forward and backward,
    regular and shifted windows) is the qkv map of its window layout (linear in the
    tokens), below N x N elements; softmax window attention (the control) forms that
    matrix."""
    torch.manual_seed(0)
    ws, dims = 48, 32
    n = ws * ws
    sla = ShiftedWindowAttention(WindowLinearAttention(dims, 2, ws), shift_size=shift)
    numel, op, shape = largest_intermediate(lambda x: sla(x, hw), torch.randn(1, hw[0] * hw[1], dims))
    # Shifted SLA pads by ws - shift at the top/left, then to window multiples.
    layout_tokens = math.prod(math.ceil((size + (ws - shift) % ws) / ws) * ws for size in hw)
    assert numel <= layout_tokens * 3 * dims < n * n, (op, shape)

    softmax = ShiftedWindowAttention(WindowSoftmaxAttention(dims, 2, ws), shift_size=shift)
    with sdpa_kernel(SDPBackend.MATH):
        numel, op, shape = largest_intermediate(lambda x: softmax(x, hw), torch.randn(1, hw[0] * hw[1], dims))
    assert numel >= n * n, (op, shape)
