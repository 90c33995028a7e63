"""SLAB-PVT (SLABPyramidVisionTransformer) as a detection backbone: any input size,
every attention mix, gradients, pretrained positional tables, argument checking,
and SLA's linear memory. The mmdet conventions both backbones keep (frozen stages,
norm_eval, checkpointing, weights round trip) are in test_backbone_conventions.py.

Fidelity to the authors' classification model at 224x224 is in
test_reference_fidelity.py; most tests here use a small arch for speed.
"""
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from slab_mmdet.models.layers.attention import SpatialReductionAttention, SpatialReductionLinearAttention
from testing_utils.backbone_utils import (PVT_MINI, PVT_MINI_ARCH, assert_gradients_reach_every_parameter,
                                          assert_invalid, assert_resized_grid_table, build_backbone, check_outputs,
                                          common_invalid_arguments, largest_intermediate, structured_grid_table)

MINI_ARCH, MINI = PVT_MINI_ARCH, PVT_MINI

ATTENTION_MIXES = {
    'sla': dict(attn_types='LLLL'),
    'softmax': dict(attn_types='SSSS'),
    'mixed': dict(attn_types='LSSL'),
    'sla-reduced': dict(attn_types='LLLL', la_sr_ratios=(8, 4, 2, 1)),
    'mixed-reduced': dict(attn_types='SLLS', la_sr_ratios=(1, 4, 2, 1)),
}
SIZES = [(32, 32), (33, 47), (224, 224), (333, 517)]


@pytest.mark.parametrize('size', SIZES, ids=lambda s: f'{s[0]}x{s[1]}')
@pytest.mark.parametrize('mix', ATTENTION_MIXES)
def test_outputs_at_strides_4_to_32_for_any_input_size(mix, size):
    check_outputs(build_backbone(dict(MINI, **ATTENTION_MIXES[mix])), *size, batch=2)


def test_real_tiny_model_at_detection_size():
    outs = check_outputs(build_backbone(dict(type='SLABPyramidVisionTransformer', arch='tiny')), 800, 1216)
    assert [o.shape[1] for o in outs] == [64, 128, 320, 512]


def test_out_indices_select_stages():
    model = build_backbone(dict(MINI, out_indices=(1, 3)))
    assert not hasattr(model, 'norm0') and not hasattr(model, 'norm2')
    outs = check_outputs(model, 64, 96)
    assert [tuple(o.shape) for o in outs] == [(1, 32, 8, 12), (1, 64, 2, 3)]


@pytest.mark.parametrize('size', [(31, 64), (64, 31), (16, 16)])
def test_inputs_below_32_pixels_are_refused(size):
    model = build_backbone(MINI)
    with pytest.raises(ValueError, match=rf'at least 32x32 pixels .*got {size[0]}x{size[1]}'):
        model(torch.randn(1, 3, *size))


def test_reduction_ratios_above_32_over_stride_raise_the_minimum_input_size():
    # Stage 2 (stride 16) reducing keys by 4 needs a 4x4 map there: 64 pixels.
    model = build_backbone(dict(MINI, attn_types='SLLS', la_sr_ratios=(1, 2, 4, 1)))
    assert model.min_input_size == 64
    with pytest.raises(ValueError, match=r'at least 64x64 pixels .*got 63x100'):
        model(torch.randn(1, 3, 63, 100))
    check_outputs(model, 64, 65)
    assert build_backbone(dict(MINI, attn_types='LLLL', la_sr_ratios=(8, 4, 2, 1))).min_input_size == 32


@pytest.mark.parametrize('mix', ATTENTION_MIXES)
def test_gradients_reach_every_parameter(mix):
    assert_gradients_reach_every_parameter(build_backbone(dict(MINI, **ATTENTION_MIXES[mix])), 65, 97)



def pvt_grid_tables(model):
    """(name, table, grid) of every positional table of ``model``."""
    tables = []
    for i, stage in enumerate(model.stages):
        tables.append((f'stages.{i}.pos_embed', stage.pos_embed, stage.pos_grid))
        for j, block in enumerate(stage.blocks):
            if isinstance(block.attn, SpatialReductionLinearAttention):
                tables.append((f'stages.{i}.blocks.{j}.attn.positional_encoding', block.attn.positional_encoding,
                               block.attn.pos_grid))
    return tables


def test_pretrained_positional_tables_are_resized_to_pretrain_img_size(tmp_path):
    cfg = dict(MINI, attn_types='LLSL', la_sr_ratios=(2, 1, 1, 1))
    source = build_backbone(dict(cfg, pretrain_img_size=128))
    with torch.no_grad():
        for _, table, grid in pvt_grid_tables(source):
            table.copy_(structured_grid_table(table, grid))
    path = tmp_path / 'pvt_128.pth'
    torch.save(source.state_dict(), path)

    model = build_backbone(dict(cfg, pretrain_img_size=224, init_cfg=dict(type='Pretrained', checkpoint=str(path))))
    source_tables = {name: grid for name, _, grid in pvt_grid_tables(source)}
    # 224 / 4 = 56 -> 28 -> 14 -> 7 tokens (SLA keys in stage 0 reduced by 2 more).
    grids = [(56, 56), (28, 28), (28, 28), (28, 28), (14, 14), (7, 7), (7, 7)]
    assert [grid for _, _, grid in pvt_grid_tables(model)] == grids
    for name, table, grid in pvt_grid_tables(model):
        assert table.shape == (1, grid[0] * grid[1], table.shape[-1])
        assert_resized_grid_table(table.detach(), grid, source_tables[name][0])
    # Everything else loads unchanged.
    own, src = model.state_dict(), source.state_dict()
    for key in src:
        if key.rsplit('.', 1)[-1] not in ('pos_embed', 'positional_encoding'):
            assert torch.equal(own[key], src[key]), key
    check_outputs(model, 96, 160)


def test_invalid_arguments_are_refused():
    cases = common_invalid_arguments(MINI) + [
        (dict(MINI, la_sr_ratios=(1, 1, 1)), r'la_sr_ratios needs 4 integers >= 1, got \(1, 1, 1\)'),
        (dict(MINI, la_sr_ratios=(1, 0, 1, 1)), r'la_sr_ratios needs 4 integers >= 1'),
        (dict(MINI, arch=dict(MINI_ARCH, depths=(1, 1, 1))), r'must all have one entry per stage'),
        (dict(MINI, arch={k: v for k, v in MINI_ARCH.items() if k != 'sr_ratios'}), r'exactly the keys'),
        (dict(MINI, arch=dict(MINI_ARCH, num_heads=(3, 2, 3, 4))), r'embed_dims 16 is not divisible by num_heads 3'),
        (dict(MINI, pretrain_img_size=16), r'pretrain_img_size must be an int >= 32 .*got 16'),
    ]
    for cfg, match in cases:
        assert_invalid(cfg, match)


@pytest.mark.parametrize('sr_ratio', [1, 2])
def test_sla_never_forms_an_attention_matrix(sr_ratio):
    """N = 64x64 queries: SLA's largest intermediate (forward and backward) stays far
    below N x N_kv elements; the softmax attention (the control) forms that matrix."""
    torch.manual_seed(0)
    grid, dims = (64, 64), 32
    n, n_kv = 64 * 64, (64 // sr_ratio) ** 2
    sla = SpatialReductionLinearAttention(dims, 2, pos_grid=(64 // sr_ratio,) * 2, sr_ratio=sr_ratio)
    numel, op, shape = largest_intermediate(lambda x: sla(x, grid), torch.randn(1, n, dims))
    assert numel < n * n_kv / 8, (op, shape)

    softmax = SpatialReductionAttention(dims, 2, sr_ratio=sr_ratio)
    with sdpa_kernel(SDPBackend.MATH):  # the plain formula (CPU's fused kernel tiles the matrix)
        numel, op, shape = largest_intermediate(lambda x: softmax(x, grid), torch.randn(1, n, dims))
    assert numel >= n * n_kv, (op, shape)


def test_reduced_sla_values_are_resized_along_the_token_sequence():
    """With keys/values spatially reduced, the depth-wise conv runs on V resized from
    the M reduced tokens to the H*W query tokens by 1-D linear interpolation along
    the flattened sequence (what the reference model does at 224x224)."""
    torch.manual_seed(0)
    attn = SpatialReductionLinearAttention(8, 2, pos_grid=(4, 4), sr_ratio=4).eval()
    seen = {}
    attn.norm.register_forward_hook(lambda m, i, o: seen.__setitem__('reduced', o))
    attn.value_conv.register_forward_hook(lambda m, i, o: seen.__setitem__('conv_in', i[0]))
    hw = (18, 23)  # reduced to 4 x 5 keys
    with torch.no_grad():
        attn(torch.randn(2, hw[0] * hw[1], 8), hw)
    with torch.no_grad():
        v = attn.kv(seen['reduced']).chunk(2, dim=-1)[1]                # (B, M, C)
    assert v.shape[1] == 4 * 5
    expected = F.interpolate(v.transpose(1, 2), size=hw[0] * hw[1], mode='linear', align_corners=False)
    expected = expected.transpose(1, 2)                                 # (B, H*W, C)
    torch.testing.assert_close(seen['conv_in'], expected)


@pytest.mark.parametrize('num_heads, sr_ratio', [(1, 1), (2, 1), (2, 2)])
def test_sla_traced_formulation_equals_the_eager_one(num_heads, sr_ratio, monkeypatch):
    """What an export traces (keys summed by a product with ones, k and v from the halves of
    the kv weight, the bias in the positional table, the conv added after merging the heads)
    is the eager arithmetic, in float64, for one head and several."""
    from slab_mmdet.models.layers import attention
    torch.manual_seed(0)
    attn = SpatialReductionLinearAttention(8, num_heads, pos_grid=(3, 4), sr_ratio=sr_ratio).double().eval()
    with torch.no_grad():
        attn.positional_encoding.normal_()
    hw = (10, 12)
    x = torch.randn(2, hw[0] * hw[1], 8, dtype=torch.float64)
    eager = attn(x, hw)
    monkeypatch.setattr(attention, 'exporting_graph', lambda: True)
    traced_formulation = attn(x, hw)
    torch.testing.assert_close(traced_formulation, eager, rtol=1e-12, atol=1e-12)
