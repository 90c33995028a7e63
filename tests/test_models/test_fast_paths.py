"""The inference fast paths (the MLP in chunks of tokens, PVT's attentions in chunks of
queries, the window attentions in tiles of windows, the patch convolutions in channels-last)
compute what the plain whole-tensor code computes, in float64, and run only where they may:
grad mode off, modules in eval mode, on a CPU, not traced, not under autocast, not inside
``plain_inference()``."""
import pytest
import torch
import torch.nn as nn

from slab_mmdet.models.layers import attention, fast_paths, transformer, window_attention
from slab_mmdet.models.layers.attention import SpatialReductionAttention, SpatialReductionLinearAttention
from slab_mmdet.models.layers.fast_paths import fast_path, plain_inference
from slab_mmdet.models.layers.transformer import Mlp, PatchEmbed, PreNormBlock, pad_to_multiple
from slab_mmdet.models.layers.window_attention import (ShiftedWindowAttention, WindowLinearAttention,
                                                       WindowSoftmaxAttention, shifted_window_bands, window_tiles)
from testing_utils.backbone_utils import PVT_MINI, SWIN_MINI, build_backbone


class TokenwiseAttention(nn.Module):
    """A stand-in token mixer for PreNormBlock: one linear layer."""

    def __init__(self, dims):
        super().__init__()
        self.linear = nn.Linear(dims, dims)

    def input_layers(self):
        return [self.linear]

    def forward(self, x, hw_shape):
        return self.linear(x)

    def add_to(self, x, hw_shape, residual):
        return residual + self(x, hw_shape)


def blocked_and_plain(module, *inputs):
    """``module(*inputs)`` on the fast paths and inside plain_inference(), each on fresh copies."""
    with torch.no_grad():
        blocked = module(*(t.clone() for t in inputs))
        with plain_inference():
            plain = module(*(t.clone() for t in inputs))
    return blocked, plain


# --- when -----------------------------------------------------------------------------------
def test_fast_path_only_in_eager_cpu_inference(monkeypatch):
    module = nn.Linear(2, 2).eval()
    x = torch.randn(3, 2)
    assert not fast_path(x, module)           # grad mode on: autograd may record anything after x
    with torch.no_grad():
        assert fast_path(x, module)
        with torch.inference_mode():
            assert fast_path(x, module)
        assert not fast_path(x, module.train())
        module.eval()
        with plain_inference():
            with plain_inference():
                assert not fast_path(x, module)
            assert not fast_path(x, module)
        assert fast_path(x, module)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert not fast_path(x, module)
        monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
        assert not fast_path(x, module)
        monkeypatch.undo()
        monkeypatch.setattr(torch.jit, 'is_tracing', lambda: True)
        assert not fast_path(x, module)


@torch.no_grad()
def test_plain_inference_is_restored_after_an_error():
    x = torch.randn(3, 2)
    with pytest.raises(RuntimeError):
        with plain_inference():
            raise RuntimeError('inside')
    assert fast_path(x, nn.Identity().eval())
    assert fast_paths._plain_inference_depth == 0


# --- the MLP in chunks of tokens ----------------------------------------------------------------
@pytest.mark.parametrize('bias', [True, False])
def test_mlp_in_chunks_adds_the_mlp_in_place(bias, monkeypatch):
    """Chunks of 3 tokens (the last one shorter) over 10 tokens, with a norm before the MLP."""
    monkeypatch.setattr(transformer, 'MLP_CHUNK_ELEMENTS', 3 * 8)
    torch.manual_seed(0)
    mlp = Mlp(4, 8).double().eval()
    if not bias:
        mlp.fc2.bias = None
    norm = nn.LayerNorm(4).double().eval()
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    want = x + mlp(norm(x))
    with torch.no_grad():
        got = mlp.add_to_in_chunks(x, norm)
    assert got is x
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('norm', ['LN', 'none'])
def test_block_runs_its_mlp_in_chunks_in_inference_only(norm, monkeypatch):
    monkeypatch.setattr(transformer, 'MLP_CHUNK_ELEMENTS', 7 * 12)
    torch.manual_seed(0)
    block = PreNormBlock(6, TokenwiseAttention(6), 12, dict(type='LN'), deploy=(norm == 'none')).double().eval()
    x = torch.randn(1, 20, 6, dtype=torch.float64)
    calls = []
    original = Mlp.add_to_in_chunks
    monkeypatch.setattr(Mlp, 'add_to_in_chunks', lambda self, *a: calls.append(1) or original(self, *a))
    blocked, plain = blocked_and_plain(lambda t: block(t, (4, 5)), x)
    assert len(calls) == 1                       # the plain run did not take it
    torch.testing.assert_close(blocked, plain, rtol=1e-12, atol=1e-12)
    block(x, (4, 5)).sum().backward()            # grad mode: the whole-tensor code (x needs no gradient)
    block.train()
    with torch.no_grad():
        block(x, (4, 5))                         # training mode: dropout and drop-path may act
    assert len(calls) == 1


def test_block_leaves_its_input_unchanged():
    torch.manual_seed(0)
    block = PreNormBlock(6, TokenwiseAttention(6), 12, dict(type='LN')).eval()
    x = torch.randn(1, 20, 6)
    before = x.clone()
    with torch.no_grad():
        block(x, (4, 5))
    assert torch.equal(x, before)


# --- patch embeddings in channels-last ---------------------------------------------------------
@pytest.mark.parametrize('hw', [(12, 16), (13, 18)], ids=['divisible', 'padded'])
@pytest.mark.parametrize('layout', ['nchw', 'tokens'])
def test_patch_embedding_fast_path_equals_the_plain_conv(layout, hw):
    """From an image (NCHW) or from tokens seen as a grid (channels-last strides), padded or not."""
    torch.manual_seed(0)
    embed = PatchEmbed(6, 10, patch_size=2).double().eval()
    if layout == 'nchw':
        x = torch.randn(2, 6, *hw, dtype=torch.float64)
    else:
        x = torch.randn(2, hw[0] * hw[1], 6, dtype=torch.float64).transpose(1, 2).reshape(2, 6, *hw)
    (blocked, blocked_hw), (plain, plain_hw) = blocked_and_plain(embed, x)
    assert blocked_hw == plain_hw and blocked.is_contiguous()
    torch.testing.assert_close(blocked, plain, rtol=1e-12, atol=1e-12)


def test_padding_keeps_a_channels_last_grid_channels_last():
    tokens = torch.randn(1, 5 * 7, 3)
    grid = tokens.transpose(1, 2).reshape(1, 3, 5, 7)
    with torch.no_grad():
        padded, pad = pad_to_multiple(grid, 4, channels_last=False)
    assert pad == (3, 1) and padded.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(padded, torch.nn.functional.pad(grid, (0, 1, 0, 3)), rtol=0, atol=0)


# --- PVT's attentions: the queries in chunks, with the residual ----------------------------------
@pytest.mark.parametrize('qkv_bias', [True, False])
@pytest.mark.parametrize('hw', [(6, 9), (6, 8)], ids=['resized-positions', 'pretraining-grid'])
@pytest.mark.parametrize('sr_ratio', [1, 2])
@pytest.mark.parametrize('kind', ['L', 'S'])
def test_pvt_attention_in_chunks_adds_the_attention_to_the_residual(kind, sr_ratio, hw, qkv_bias, monkeypatch):
    """Chunks of 7 queries (the last shorter), batch 2, in float64, with the keys' positional
    table resized or (6x8 map reduced by 2: its 3x4 grid) not; the residual is not written,
    nor is the positional table."""
    monkeypatch.setattr(attention, 'ATTENTION_CHUNK_TOKENS', 7)
    torch.manual_seed(0)
    if kind == 'L':
        attn = SpatialReductionLinearAttention(8, 2, pos_grid=(3, 4), sr_ratio=sr_ratio, qkv_bias=qkv_bias)
        with torch.no_grad():
            attn.positional_encoding.normal_()
    else:
        attn = SpatialReductionAttention(8, 2, sr_ratio=sr_ratio, qkv_bias=qkv_bias)
    attn = attn.double().eval()
    x, residual = torch.randn(2, 2, hw[0] * hw[1], 8, dtype=torch.float64).unbind(0)
    before = residual.clone()
    parameters = {name: p.clone() for name, p in attn.named_parameters()}
    with torch.no_grad():
        got = attn.add_to(x, hw, residual)
        with plain_inference():
            want = residual + attn(x, hw)
    assert torch.equal(residual, before)
    assert all(torch.equal(p, parameters[name]) for name, p in attn.named_parameters())
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# --- window attention in tiles ------------------------------------------------------------------
@pytest.mark.parametrize('length, ws, shift', [(20, 7, 0), (20, 7, 3), (19, 4, 2), (5, 7, 0), (56, 56, 0)])
@pytest.mark.parametrize('tile_tokens', [1, 40, 200, 4096])
def test_window_tiles_cover_each_band_once_with_whole_windows(length, ws, shift, tile_tokens, monkeypatch):
    monkeypatch.setattr(window_attention, 'WINDOW_TILE_TOKENS', tile_tokens)
    width = 23
    col_bands = shifted_window_bands(width, ws, 0)
    for r0, r1, wh, _ in shifted_window_bands(length, ws, shift):
        for c0, c1, wc, _ in col_bands:
            covered = torch.zeros(length, width, dtype=torch.int64)
            for rows, cols in window_tiles((r0, r1), (c0, c1), (wh, wc)):
                assert (rows.stop - rows.start) % wh == 0 and (cols.stop - cols.start) % wc == 0
                assert (rows.stop - rows.start) * (cols.stop - cols.start) <= max(tile_tokens, wh * wc)
                covered[rows, cols] += 1
            assert (covered[r0:r1, c0:c1] == 1).all() and covered.sum() == (r1 - r0) * (c1 - c0)


@pytest.mark.parametrize('hw', [(10, 12), (19, 20), (30, 8)], ids=lambda s: f'{s[0]}x{s[1]}')
@pytest.mark.parametrize('shift', [0, 3])
@pytest.mark.parametrize('kind', ['L', 'S'])
@pytest.mark.parametrize('tile_tokens', [1, 100, 4096])
def test_window_attention_in_tiles_equals_the_whole_map(kind, shift, hw, tile_tokens, monkeypatch):
    """Tiles of one window, of a few, and of whole bands, in float64."""
    monkeypatch.setattr(window_attention, 'WINDOW_TILE_TOKENS', tile_tokens)
    torch.manual_seed(0)
    inner = (WindowLinearAttention if kind == 'L' else WindowSoftmaxAttention)(16, 2, 7).double().eval()
    with torch.no_grad():
        for name, p in inner.named_parameters():
            if name in ('positional_encoding', 'relative_position_bias_table'):
                p.normal_()
    attn = ShiftedWindowAttention(inner, shift_size=shift).eval()
    x = torch.randn(2, hw[0] * hw[1], 16, dtype=torch.float64)
    tiles = []
    original = window_attention.WindowAttentionBase._forward_in_tiles
    monkeypatch.setattr(window_attention.WindowAttentionBase, '_forward_in_tiles',
                        lambda self, *a: tiles.append(1) or original(self, *a))
    blocked, plain = blocked_and_plain(lambda t: attn(t, hw), x)
    assert tiles == [1]
    torch.testing.assert_close(blocked, plain, rtol=1e-12, atol=1e-12)


# --- whole backbones ----------------------------------------------------------------------------
@pytest.mark.parametrize('cfg', [
    dict(SWIN_MINI, attn_types='LLSS', window_sizes=(7, 7, 7, 7)),
    dict(SWIN_MINI, attn_types='SSSS', window_sizes=(7, 7, 7, 7), norm_cfg=dict(type='LN')),
    dict(PVT_MINI),
    dict(PVT_MINI, attn_types='SSSS', norm_cfg=dict(type='LN')),
], ids=['slab-swin', 'swin-twin', 'slab-pvt', 'pvt-twin'])
def test_backbones_give_the_same_outputs_blocked_and_plain(cfg, monkeypatch):
    """Small tiles and chunks, so that every stage runs several of them (float64)."""
    monkeypatch.setattr(window_attention, 'WINDOW_TILE_TOKENS', 60)
    monkeypatch.setattr(transformer, 'MLP_CHUNK_ELEMENTS', 500)
    monkeypatch.setattr(attention, 'ATTENTION_CHUNK_TOKENS', 100)
    model = build_backbone(cfg).double().eval()
    x = torch.randn(1, 3, 150, 226, dtype=torch.float64)
    blocked, plain = blocked_and_plain(model, x)
    for a, b in zip(blocked, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
