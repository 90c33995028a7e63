"""DyT (gamma * tanh(alpha * x) + beta) as a norm layer: its forward, registration with mmcv's
norm builder (usable by both SLAB backbones and by mmdet's PVT/Swin), its fusion (gamma/beta
fold into the next layer exactly in float64, the tanh stays; deploy=True builds that
structure), and clear errors for a bad alpha, in a config or in a checkpoint."""
import copy
import math

import pytest
import torch
from mmcv.cnn import build_norm_layer
from mmdet.registry import MODELS

from slab_mmdet.models.layers import DyT, FusionError, ScaledTanh, TanhAffine, fold_norm
from slab_mmdet.models.layers.norms import NORM_LAYER_TYPES

pytestmark = pytest.mark.usefixtures('quiet_mmengine_logger')

DYT = dict(type='DyT', alpha_init=0.5)
PVT = dict(type='SLABPyramidVisionTransformer',
           arch=dict(embed_dims=(16, 32, 40, 64), num_heads=(1, 2, 5, 8), mlp_ratios=(2, 2, 2, 2),
                     sr_ratios=(8, 4, 2, 1), depths=(1, 1, 1, 1)),
           attn_types='LSLL', la_sr_ratios=(4, 1, 2, 1), drop_path_rate=0.0, norm_cfg=DYT)
SWIN = dict(type='SLABSwinTransformer', arch=dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8)),
            attn_types='LLSS', window_sizes=(8, 8, 4, 4), drop_path_rate=0.0, norm_cfg=DYT)


def test_forward_is_gamma_tanh_alpha_x_plus_beta():
    torch.manual_seed(0)
    layer = build_norm_layer(dict(type='DyT', alpha_init=0.7), 6)[1].double()
    assert isinstance(layer, DyT) and layer.alpha.item() == pytest.approx(0.7)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    expected = layer.weight * torch.tanh(layer.alpha * x) + layer.bias
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-15)
    # Per token, no statistics: one token's output does not depend on the others.
    torch.testing.assert_close(layer(x[:, :1]), expected[:, :1], rtol=0, atol=1e-15)


@pytest.mark.parametrize('alpha', [0, -0.5, float('nan'), float('inf'), True, '0.5'])
def test_a_bad_alpha_init_is_refused_by_value(alpha):
    with pytest.raises(ValueError, match=r'DyT: alpha must be a finite number > 0 .*got ' + repr(alpha)[:4]):
        DyT(4, alpha_init=alpha)


def test_a_checkpoint_with_a_non_finite_alpha_is_refused_naming_the_layer():
    model = torch.nn.Sequential(DyT(4))
    state = model.state_dict()
    state['0.alpha'] = torch.tensor(float('nan'))
    with pytest.raises(ValueError, match=r"DyT 0: the checkpoint's alpha is \[nan\]; it must be one finite number"):
        model.load_state_dict(state)


def _randomised(cfg, seed=0):
    torch.manual_seed(seed)
    backbone = MODELS.build(copy.deepcopy(cfg))
    backbone.init_weights()
    with torch.no_grad():   # trained-looking DyTs: every alpha, gamma and beta away from its init
        for m in backbone.modules():
            if isinstance(m, DyT):
                m.alpha.uniform_(0.3, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    return backbone.double().eval()


@pytest.mark.parametrize('cfg', [PVT, SWIN], ids=['pvt', 'swin'])
def test_dyt_backbone_fuses_exactly_keeping_the_tanh(cfg):
    backbone = _randomised(cfg)
    dyts = sum(isinstance(m, DyT) for m in backbone.modules())
    assert dyts > 10
    fused = copy.deepcopy(backbone)
    fused.switch_to_deploy()
    assert not any(isinstance(m, NORM_LAYER_TYPES) for m in fused.modules())
    tanhs = [m for m in fused.modules() if isinstance(m, ScaledTanh)]
    assert len(tanhs) == dyts        # one tanh stays for every DyT (affine or not)
    # Only the patch embeddings' (after their conv) and the output norms keep their affine.
    kept_affine = sorted(n for n, m in fused.named_modules() if isinstance(m, TanhAffine))
    assert all(n.endswith('patch_embed.norm') or n.startswith('norm') for n in kept_affine), kept_affine
    with torch.no_grad():
        for hw in [(64, 64), (75, 101)]:
            x = torch.randn(2, 3, *hw, dtype=torch.float64)
            for a, b in zip(backbone(x), fused(x)):
                assert float((a - b).abs().max() / a.abs().max()) < 1e-12, hw

    deployed = MODELS.build(dict(cfg, deploy=True)).double().eval()
    deployed.load_state_dict(fused.state_dict(), strict=True)
    x = torch.randn(1, 3, 75, 101, dtype=torch.float64)
    with torch.no_grad():
        for a, b in zip(backbone(x), deployed(x)):
            assert float((a - b).abs().max() / a.abs().max()) < 1e-12


def test_output_dyts_fold_into_the_neck_leaving_their_tanh():
    backbone = _randomised(PVT)
    backbone.switch_to_deploy()
    laterals = [torch.nn.Conv2d(c, 8, 1).double() for c in backbone.num_features]
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        before = [conv(o) for conv, o in zip(laterals, backbone(x))]
        backbone.fold_output_norms_into(laterals)
        after = [conv(o) for conv, o in zip(laterals, backbone(x))]
    assert all(type(getattr(backbone, f'norm{i}')) is ScaledTanh for i in backbone.out_indices)
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_a_dyt_cannot_fold_into_the_layer_before_it():
    with pytest.raises(FusionError, match=r'stem\.norm: a DyT cannot fold into the layer before it'):
        fold_norm(DyT(4), 'stem.norm', previous_layer=torch.nn.Linear(3, 4))


@pytest.mark.parametrize('cfg', [
    dict(type='PyramidVisionTransformer', embed_dims=16, num_layers=[1, 1, 1, 1], num_heads=[1, 2, 4, 8],
         norm_cfg=DYT),
    dict(type='SwinTransformer', embed_dims=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window_size=4,
         norm_cfg=DYT),
], ids=['mmdet_pvt', 'mmdet_swin'])
def test_mmdets_own_backbones_take_dyt(cfg):
    torch.manual_seed(0)
    backbone = MODELS.build(cfg)
    backbone.eval()   # mmdet's SwinTransformer.train() returns None, so no chaining
    assert sum(isinstance(m, DyT) for m in backbone.modules()) > 5
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in backbone.modules())
    with torch.no_grad():
        outs = backbone(torch.randn(1, 3, 64, 64))
    assert len(outs) == 4 and all(torch.isfinite(o).all() for o in outs)


def test_alpha_is_learned():
    layer = DyT(3)
    x = torch.randn(4, 3)
    layer(x).pow(2).sum().backward()
    assert layer.alpha.grad is not None and math.isfinite(layer.alpha.grad.item()) and layer.alpha.grad.item() != 0


def test_fused_dyt_detector_exports_tanh_and_no_normalisation(tmp_path):
    """The fused DyT SLAB-PVT-T Mask R-CNN exports to ONNX: its tanhs are Tanh nodes, no
    normalisation node is left, and ONNX Runtime gives PyTorch's features."""
    from slab_mmdet import apis
    from slab_mmdet.deploy import fuse_detector
    from slab_mmdet.deploy.equivalence import onnx_feature_differences
    from slab_mmdet.deploy.graph import norm_nodes, onnx_session, read_graph
    from slab_mmdet.deploy.onnx_export import FeatureExtractor, export_onnx
    from testing_utils import REPO_ROOT
    torch.manual_seed(0)
    model = apis.load_detector(f'{REPO_ROOT}/benchmarks/table3_mini/configs/slab_pvt_t_dyt.py', None)
    dyts = sum(isinstance(m, DyT) for m in model.backbone.modules())
    report = fuse_detector(model)
    assert report['removed_norms'] == dyts and report['kept_norms'] == 0
    assert report['output_norms'] == 'folded into neck'
    path = str(tmp_path / 'dyt.onnx')
    export_onnx(model, path, input_hw=(256, 320), logger=lambda *a: None)
    graph = read_graph(path)
    assert norm_nodes(graph) == []
    assert sum(node.op_type == 'Tanh' for node in graph.graph.node) == dyts
    diffs = onnx_feature_differences(FeatureExtractor(model).eval(), onnx_session(path), [(256, 320), (250, 333)])
    assert max(diffs.values()) < 1e-4, diffs
