"""Checkpoints of another architecture, size or structure are refused with both sides named, in
every way a checkpoint reaches a backbone (load_state_dict: what load_from, both test.py and
DetInferencer reach; init_cfg); the layouts are recognised from ours and the ones the converters
register."""
import pytest
import torch

from slab_mmdet.models.backbones.checkpoint_fit import (SOURCE_LAYOUTS, describe_architecture, layout_of,
                                                       register_source_layout)
from testing_utils.backbone_utils import PVT_MINI, PVT_MINI_ARCH, SWIN_MINI, build_backbone

PVT_DEEPER = dict(PVT_MINI, arch=dict(PVT_MINI_ARCH, depths=(2, 1, 1, 1)))


def refusal(cfg, state, tmp_path):
    """The message of the refusal of ``state`` by the backbone of ``cfg``, through load_state_dict
    and through init_cfg (a detector checkpoint): the same in both."""
    with pytest.raises(ValueError) as direct:
        build_backbone(cfg).load_state_dict(state, strict=False)
    path = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in state.items()}}, path)
    with pytest.raises(ValueError) as via_init_cfg:
        build_backbone(dict(cfg, init_cfg=dict(type='Pretrained', checkpoint=str(path))))
    assert str(via_init_cfg.value) == str(direct.value)
    return str(direct.value)


def test_layouts_are_recognised_ours_and_the_registered_ones():
    assert layout_of(build_backbone(PVT_MINI).state_dict()) == 'slab_pvt'
    assert layout_of(build_backbone(SWIN_MINI).state_dict()) == 'slab_swin'
    assert layout_of(['patch_embed1.proj.weight']) == 'reference_pvt'
    assert layout_of(['layers.0.blocks.0.attn.qkv.weight']) == 'reference_swin'
    assert layout_of(['layers.0.1.attn.attn.in_proj_weight']) == 'mmdet_pvt'
    assert layout_of(['stages.0.blocks.0.attn.w_msa.qkv.weight']) == 'mmdet_swin'
    assert layout_of(['head.weight']) is None
    assert describe_architecture(build_backbone(PVT_MINI).state_dict()) == \
        'SLABPyramidVisionTransformer (depths 1-1-1-1, widths 16-32-48-64, attention LLLL)'


def test_a_layout_name_is_registered_once():
    before = dict(SOURCE_LAYOUTS)
    assert register_source_layout('mmdet_pvt', *SOURCE_LAYOUTS['mmdet_pvt']) == 'mmdet_pvt'   # a re-import
    with pytest.raises(ValueError, match="layout 'mmdet_pvt' is registered already, as 'mmdet PyramidVision"):
        register_source_layout('mmdet_pvt', 'another model', r'x\.')
    with pytest.raises(ValueError, match="layout 'slab_swin' is registered already, as 'SLABSwinTransformer'"):
        register_source_layout('slab_swin', 'another model', r'x\.')
    assert SOURCE_LAYOUTS == before


def test_a_swin_checkpoint_in_a_pvt_model_is_refused_naming_both(tmp_path):
    message = refusal(PVT_MINI, build_backbone(SWIN_MINI).state_dict(), tmp_path)
    assert ('holds another backbone, SLABSwinTransformer (depths 2-2-2-2, widths 16-32-64-128, attention LLSS), '
            'but this model is SLABPyramidVisionTransformer (depths 1-1-1-1, widths 16-32-48-64, attention LLLL): '
            'it was trained with another config') in message


@pytest.mark.parametrize('other, shows', [
    (PVT_DEEPER, 'depths 2-1-1-1'),                    # another size: its keys include all of ours
    (dict(PVT_MINI, attn_types='SSSS'), 'attention SSSS'),
])
def test_another_size_or_attention_is_refused_naming_both(other, shows, tmp_path):
    message = refusal(PVT_MINI, build_backbone(other).state_dict(), tmp_path)
    theirs, ours = message.split('but this model is')
    assert 'holds another backbone, SLABPyramidVisionTransformer (' in theirs and shows in theirs
    assert ours.startswith(' SLABPyramidVisionTransformer (depths 1-1-1-1, widths 16-32-48-64, attention LLLL)')


def test_other_backbone_options_are_refused_naming_the_keys(tmp_path):
    state = build_backbone(dict(PVT_MINI, kernel_size=3)).state_dict()
    with pytest.raises(ValueError, match=r'does not fit this backbone \(SLABPyramidVisionTransformer .*\): '
                                         r'\d+ of other shape \(e\.g\. '
                                         r'stages\.0\.blocks\.0\.attn\.value_conv\.dwc\.weight: \(16, 1, 3, 3\) '
                                         r'in the checkpoint, \(16, 1, 5, 5\) here\)'):
        build_backbone(PVT_MINI).load_state_dict(state, strict=False)
    state = build_backbone(dict(PVT_MINI, la_sr_ratios=(2, 1, 1, 1))).state_dict()
    with pytest.raises(ValueError, match=r'weights it does not have \(e\.g\. stages\.0\.blocks\.0\.attn\.sr\.weight\)'):
        build_backbone(PVT_MINI).load_state_dict(state, strict=False)


def test_output_norms_of_another_kind_are_refused():
    state = build_backbone(dict(SWIN_MINI, out_norm_cfg=dict(type='LN'))).state_dict()
    with pytest.raises(ValueError, match=r'output norm norm0 is another kind of layer in the checkpoint \(norm0\.bias, '
                                         r'norm0\.weight\) than here'):
        build_backbone(SWIN_MINI).load_state_dict(state, strict=False)


def test_a_fused_checkpoint_of_another_architecture_is_told_so_not_to_fuse():
    swin = build_backbone(SWIN_MINI).eval()
    for _, m in swin.named_modules():
        if hasattr(m, 'set_g'):
            m.set_g(0.0)
    swin.switch_to_deploy()
    with pytest.raises(ValueError, match='holds another backbone, SLABSwinTransformer') as error:
        build_backbone(dict(PVT_MINI, deploy=True)).load_state_dict(swin.state_dict(), strict=False)
    assert 'fuse it first' not in str(error.value).lower()


def test_the_same_architecture_loads_without_its_output_norms():
    """A classification checkpoint has no output norms: everything else loads, the output norms
    are reported missing and keep their own values."""
    source = build_backbone(PVT_MINI, seed=1).state_dict()
    state = {k: v for k, v in source.items() if not k.startswith('norm')}
    model = build_backbone(PVT_MINI)
    own_norms = {k: v.clone() for k, v in model.state_dict().items() if k.startswith('norm')}
    result = model.load_state_dict(state, strict=False)
    # (BatchNorm fills a missing num_batches_tracked itself, so torch does not report it.)
    assert sorted(result.missing_keys) == sorted(k for k in own_norms if not k.endswith('num_batches_tracked'))
    assert result.unexpected_keys == []
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert all(torch.equal(loaded[k], v) for k, v in own_norms.items())
