"""switch_to_deploy of both SLAB backbones: exact in float64 (and within 1e-4 in float32) at sizes
where Swin's windows pad, no norm left, the deploy=True structure loads the fused weights
strictly; a model still annealing or with LayerNorms is refused and left unchanged."""
import copy

import pytest
import torch
from mmdet.registry import MODELS

from slab_mmdet.models.layers import ChannelAffine
from slab_mmdet.models.layers.norms import NORM_LAYER_TYPES
from testing_utils.helpers import anneal_and_randomise_norms

PVT = dict(type='SLABPyramidVisionTransformer',
           arch=dict(embed_dims=(16, 32, 40, 64), num_heads=(1, 2, 5, 8), mlp_ratios=(2, 2, 2, 2),
                     sr_ratios=(8, 4, 2, 1), depths=(1, 1, 1, 1)),
           attn_types='LSLL', la_sr_ratios=(4, 1, 2, 1), drop_path_rate=0.0)
# Windows (8, 8, 4, 4): at these sizes every stage pads, and shifted blocks have regions.
SWIN = dict(type='SLABSwinTransformer', arch=dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8)),
            attn_types='LLSS', window_sizes=(8, 8, 4, 4), drop_path_rate=0.0)
SIZES = [(64, 64), (75, 101), (130, 98)]


pytestmark = pytest.mark.usefixtures('quiet_mmengine_logger')


def annealed_backbone(cfg, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    backbone = MODELS.build(copy.deepcopy(cfg))
    backbone.init_weights()
    return anneal_and_randomise_norms(backbone, seed).to(dtype).eval()


def max_rel_diff(a, b):
    return max(float((x - y).abs().max() / x.abs().max()) for x, y in zip(a, b))



@pytest.mark.parametrize('cfg', [PVT, SWIN], ids=['pvt', 'swin'])
def test_switch_to_deploy_is_exact_and_leaves_no_norm(cfg):
    backbone = annealed_backbone(cfg)
    fused = copy.deepcopy(backbone)
    fused.switch_to_deploy()
    assert fused.deploy
    assert not any(isinstance(m, NORM_LAYER_TYPES) for m in fused.modules())
    with torch.no_grad():
        for hw in SIZES:
            x = torch.randn(2, 3, *hw, dtype=torch.float64)
            assert max_rel_diff(backbone(x), fused(x)) < 1e-10, hw

    # deploy=True builds exactly that structure: the fused weights load strictly.
    deployed = MODELS.build(dict(cfg, deploy=True)).double().eval()
    deployed.load_state_dict(fused.state_dict(), strict=True)
    assert all(isinstance(getattr(deployed, f'norm{i}'), ChannelAffine) for i in deployed.out_indices)
    x = torch.randn(1, 3, *SIZES[1], dtype=torch.float64)
    with torch.no_grad():
        assert max_rel_diff(backbone(x), deployed(x)) < 1e-10


@pytest.mark.parametrize('cfg', [PVT, SWIN], ids=['pvt', 'swin'])
def test_float32_fusion_within_1e4_relative(cfg):
    backbone = annealed_backbone(cfg, dtype=torch.float32)
    fused = copy.deepcopy(backbone)
    fused.switch_to_deploy()
    with torch.no_grad():
        for hw in SIZES:
            x = torch.randn(1, 3, *hw)
            assert max_rel_diff(backbone(x), fused(x)) < 1e-4, hw


def test_fusion_refuses_a_model_still_annealing_and_leaves_it_unchanged():
    backbone = annealed_backbone(SWIN)
    backbone.stages[1].blocks[1].norm2.set_g(0.125)
    before = copy.deepcopy(backbone.state_dict())
    with pytest.raises(ValueError, match=r'stages\.1\.blocks\.1\.norm2 is a PRepBN with g = 0\.125'):
        backbone.switch_to_deploy()
    assert not backbone.deploy
    after = backbone.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_fusion_refuses_layernorm_backbones():
    backbone = MODELS.build(dict(PVT, norm_cfg=dict(type='LN', eps=1e-6)))
    with pytest.raises(ValueError, match="'LN' cannot be folded"):
        backbone.switch_to_deploy()
    with pytest.raises(ValueError, match="'LN' cannot be folded"):
        MODELS.build(dict(PVT, norm_cfg=dict(type='LN'), deploy=True))
