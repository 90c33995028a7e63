"""The SLAB authors' checkpoints converted (slab_mmdet.converters.reference_pvt/_swin through the
pipeline): plain RepBN norms at g = 0 reproduce the golden eval outputs, a detector checkpoint's
backbone converts and the rest is kept, the original LayerNorm PVT v1 weights convert to g = 1,
and conversion finds mmdet's registry whatever scope is current."""
import os.path as osp
import re

import torch
from mmdet.registry import MODELS
from testing_utils import TEST_DATA_DIR
from testing_utils.converter_utils import block_outputs, golden_state_dict

from slab_mmdet.converters import convert_reference_state_dict, convert_state_dict


def test_plain_repbn_norms_convert_with_g0():
    """A reference model built with plain RepBN norms (swin_transformer.py's default
    norm_layer) has no LayerNorm branch: g = 0. In eval mode the reference LinearNorm
    is its RepBN alone, so the golden eval outputs are also this model's."""
    golden = torch.load(osp.join(TEST_DATA_DIR, 'reference_golden_pvt.pt'), weights_only=True)
    linear_norms = [k[:-len('.total_step')] for k in golden['state_dict'] if k.endswith('.total_step')]
    sd = {}
    for key, value in golden['state_dict'].items():
        owner = next((p for p in linear_norms if key.startswith(p + '.')), None)
        if owner is None:
            sd[key] = value
        elif key.startswith(owner + '.norm2.'):
            sd[owner + '.' + key[len(owner + '.norm2.'):]] = value
    state_dict, report = convert_state_dict(sd)
    assert report.unmapped == [] and set(report.g_values.values()) == {0.0}
    assert len(report.g_values) == len(linear_norms) and 'plain RepBN' in report.summary()
    ours = MODELS.build(dict(report.backbone_cfg, drop_path_rate=0.0))
    ours.load_state_dict(state_dict, strict=False)
    ours.eval()
    got = block_outputs(ours, [stage.blocks[-1] for stage in ours.stages], golden['input'].float())
    for g, w in zip(got, golden['eval_g0']):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=2e-5)


def test_conversion_builds_in_mmdet_scope_whatever_scope_is_current():
    """A Runner leaves its own default scope ('mmengine') current; converting afterwards
    in the same process must still find mmdet's registry (and leave the scope as it was)."""
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmengine'):
        state_dict, report = convert_reference_state_dict(golden_state_dict('pvt'))
        assert DefaultScope.get_current_instance().scope_name == 'mmengine'
    assert report.unmapped == [] and report.backbone_cfg['type'] == 'SLABPyramidVisionTransformer'


def test_reference_detector_checkpoint_converts_backbone_and_keeps_the_rest():
    """The authors' detection backbones: the classification layout under ``backbone.``,
    plus output norms norm0..3 (LinearNorms)."""
    golden = golden_state_dict('swin')
    sd = {'backbone.' + k: v for k, v in golden.items() if not k.startswith(('head.', 'norm.'))}
    for key in [k for k in golden if k.startswith('layers.1.blocks.0.norm1.')]:   # 16 channels, like norm1
        sd['backbone.norm1.' + key[len('layers.1.blocks.0.norm1.'):]] = golden[key]
    sd['backbone.norm1.iter'] = torch.tensor(250)
    sd['neck.fpn_convs.0.conv.weight'] = neck = torch.randn(4, 4, 3, 3)
    state_dict, report = convert_state_dict(sd)
    assert report.detector and report.kept == ['neck'] and report.unmapped == []
    assert report.g_values['norm1'] == 0.25 and torch.equal(state_dict['neck.fpn_convs.0.conv.weight'], neck)
    assert torch.equal(state_dict['backbone.norm1.repbn.alpha'], golden['layers.1.blocks.0.norm1.norm2.alpha'])
    assert sorted({k.split('.')[0] for k in report.new_keys}) == ['norm0', 'norm2', 'norm3']


def test_original_layernorm_pvt_v1_checkpoint_converts_with_g1(tmp_path):
    """The LayerNorm PVT v1 ImageNet weights that mmdet's PVT configs load (github
    whai362/PVT: block{i}.*, patch_embed{i}.*, pos_embed{i} with a class token in the last
    stage, cls_token, a final norm, head) convert to PRepBNs at g = 1 whose model computes
    what the LayerNorm model with those weights computes."""
    from mmdet.registry import MODELS
    arch = dict(embed_dims=(16, 32, 40, 64), num_heads=(1, 2, 5, 8), mlp_ratios=(2, 2, 2, 2),
                sr_ratios=(8, 4, 2, 1), depths=(1, 1, 1, 1))
    torch.manual_seed(0)
    ln_model = MODELS.build(dict(type='SLABPyramidVisionTransformer', arch=arch, attn_types='SSSS',
                                 norm_cfg=dict(type='LN', eps=1e-6), drop_path_rate=0.0)).eval()
    for p in ln_model.parameters():   # no parameter left at an initialisation that hides a mix-up
        torch.nn.init.normal_(p, std=0.2)
    original = {}
    for key, value in ln_model.state_dict().items():
        m = re.fullmatch(r'stages\.(\d)\.(.*)', key)
        if m is None:
            continue   # output norms: the classification model has none
        i, rest = int(m[1]) + 1, m[2]
        if rest == 'pos_embed':
            if i == 4:   # PVT v1 puts the class token's position first in the last stage
                value = torch.cat([torch.randn(1, 1, value.shape[-1]), value], dim=1)
            original[f'pos_embed{i}'] = value
        elif rest.startswith('patch_embed.'):
            original[f'patch_embed{i}.{rest[len("patch_embed."):]}'] = value
        else:
            original[re.sub(r'^blocks\.(\d+)\.', lambda b: f'block{i}.{b[1]}.', rest)] = value
    original.update({'cls_token': torch.randn(1, 1, 64), 'norm.weight': torch.ones(64), 'norm.bias': torch.zeros(64),
                     'head.weight': torch.randn(10, 64), 'head.bias': torch.zeros(10)})
    state_dict, report = convert_state_dict(original)
    assert report.family == 'reference' and report.backbone_cfg['attn_types'] == 'SSSS'
    assert set(report.g_values.values()) == {1.0}
    assert ('cls_token', 'class token of the classification model') in report.dropped
    ours = MODELS.build(dict(report.backbone_cfg, drop_path_rate=0.0))
    ours.load_state_dict(state_dict, strict=False)
    ours.eval()
    x = torch.randn(1, 3, 224, 224)
    got = block_outputs(ours, [stage.blocks[-1] for stage in ours.stages], x)
    want = block_outputs(ln_model, [stage.blocks[-1] for stage in ln_model.stages], x)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
