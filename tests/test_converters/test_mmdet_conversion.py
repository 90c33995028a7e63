"""mmdet's checkpoints converted (slab_mmdet.converters.mmdet_pvt/_swin): its LayerNorm PVT and
Swin become SSSS PRepBN backbones (g = 1) with the same stage features, PVT v2 is refused, and a
detector checkpoint keeps its neck."""
import pytest
import torch
from mmdet.models.backbones import PyramidVisionTransformer, PyramidVisionTransformerV2, SwinTransformer
from mmdet.registry import MODELS
from testing_utils.converter_utils import block_outputs, build_converted, randomise, run_cli

from slab_mmdet.converters import ConversionError, convert_mmdet_state_dict, convert_state_dict


@pytest.mark.parametrize('num_heads, given', [((1, 2, 4, 4), None), ((2, 4, 8, 8), (2, 4, 8, 8))])
def test_mmdet_pvt_converts_to_equivalent_prepbn_backbone(num_heads, given):
    torch.manual_seed(0)
    src = randomise(PyramidVisionTransformer(embed_dims=16 // num_heads[0], num_layers=[2, 1, 1, 1],
                                             num_heads=list(num_heads), mlp_ratios=[2, 2, 2, 2], drop_path_rate=0.))
    state_dict, report = convert_mmdet_state_dict(src.state_dict(), num_heads=given)
    assert report.backbone_cfg['attn_types'] == 'SSSS'
    assert report.backbone_cfg['arch']['num_heads'] == (given or (1, 2, 4, 4))
    # norm1/norm2 of 5 blocks, the key/value norms of 4 spatially reduced blocks, 4 patch embeddings.
    assert report.unmapped == [] and len(report.g_values) == 2 * 5 + 4 + 4
    assert set(report.g_values.values()) == {1.0}
    # A fresh RepBN next to the LayerNorm weights, its identity path closed (alpha 0).
    assert torch.equal(state_dict['stages.0.blocks.0.norm1.ln.weight'], src.state_dict()['layers.0.1.1.norm1.weight'])
    assert float(state_dict['stages.0.blocks.0.norm1.repbn.alpha']) == 0.0
    assert any('alpha = 0' in note for note in report.notes)
    ours = build_converted(state_dict, report)
    x = torch.randn(1, 3, 224, 224)
    want = block_outputs(src, [layer[1][-1] for layer in src.layers], x)
    got = block_outputs(ours, [stage.blocks[-1] for stage in ours.stages], x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_mmdet_swin_converts_to_equivalent_prepbn_backbone():
    torch.manual_seed(0)
    src = randomise(SwinTransformer(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), drop_path_rate=0.))
    state_dict, report = convert_mmdet_state_dict(src.state_dict())
    assert report.backbone_cfg == dict(type='SLABSwinTransformer',
                                       arch=dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8)),
                                       attn_types='SSSS', window_sizes=(7, 7, 7, 7))
    assert report.unmapped == [] and report.new_keys == []   # mmdet's Swin has all four output norms
    ours = build_converted(state_dict, report)
    # 448: every stage (112, 56, 28, 14) has several 7x7 windows and no padding, where
    # mmdet's and our shifted windows agree.
    x = torch.randn(1, 3, 448, 448)
    blocks = [stage.blocks[-1] for stage in src.stages]
    want = block_outputs(src, blocks, x)
    got = block_outputs(ours, [stage.blocks[-1] for stage in ours.stages], x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_mmdet_pvt_v2_is_refused():
    pvt_v2 = PyramidVisionTransformerV2(embed_dims=8, num_layers=[1, 1, 1, 1])
    with pytest.raises(ConversionError, match=r'layers\.0: .*convolutional FFN.*not a PVT v1 layout'):
        convert_state_dict(pvt_v2.state_dict())


def test_mmdet_detector_checkpoint_keeps_neck(tmp_path, capsys):
    torch.manual_seed(0)
    backbone = randomise(SwinTransformer(embed_dims=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4)))
    neck = {'neck.lateral_convs.0.conv.weight': torch.randn(4, 8, 1, 1), 'neck.fpn_convs.0.conv.bias': torch.randn(4),
            'rpn_head.rpn_conv.weight': torch.randn(4, 4, 3, 3)}
    detector = {'backbone.' + k: v for k, v in backbone.state_dict().items()}
    detector.update(neck)
    src, dst = tmp_path / 'mask_rcnn_swin.pth', tmp_path / 'mask_rcnn_swin_prepbn.pth'
    # As mmengine's CheckpointHook writes it (meta, state_dict, optimizer).
    torch.save({'meta': {'epoch': 12, 'cfg': "model = dict(type='MaskRCNN')"}, 'state_dict': detector,
                'optimizer': {'state': {}, 'param_groups': []}}, src)
    assert run_cli([src, dst]) is None
    out = capsys.readouterr().out
    assert f"load_from = '{dst}'" in out and 'kept unchanged: neck, rpn_head' in out

    ckpt = torch.load(dst, weights_only=True)
    assert ckpt['meta']['detector'] and set(ckpt) == {'state_dict', 'meta'}
    for key, value in neck.items():
        assert torch.equal(ckpt['state_dict'][key], value)
    bare, _ = convert_state_dict(backbone.state_dict())
    converted = {k[len('backbone.'):]: v for k, v in ckpt['state_dict'].items() if k.startswith('backbone.')}
    assert converted.keys() == bare.keys() and all(torch.equal(converted[k], v) for k, v in bare.items())
    # The detector checkpoint initialises our backbone too (backbone. prefix stripped).
    ours = MODELS.build(dict(ckpt['meta']['backbone'], init_cfg=dict(type='Pretrained', checkpoint=str(dst))))
    ours.init_weights()
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in bare.items())
