"""The mmdet backbone conventions both SLAB backbones keep, one set of tests run on
each: frozen stages, norm_eval, activation checkpointing, and weights round-tripping
through state dicts and pretrained checkpoints."""
import pytest
from testing_utils.backbone_utils import (PVT_MINI, SWIN_MINI, assert_checkpointing_equivalent, assert_frozen_stages,
                                          assert_norm_eval, assert_save_load_round_trip, build_backbone)


def pvt_frozen_prefixes(frozen_stages):
    """SLAB-PVT's patch embeddings live in its stages: frozen_stages=0 is stage 0's."""
    if frozen_stages == 0:
        return ['stages.0.patch_embed.']
    return [f'stages.{i}.' for i in range(frozen_stages)] + [f'norm{i}.' for i in range(frozen_stages)]


def swin_frozen_prefixes(frozen_stages):
    return (['patch_embed.', 'drop_after_pos'] + [f'stages.{i}.' for i in range(frozen_stages)]
            + [f'norm{i}.' for i in range(frozen_stages)])


# Both attention kinds in every backbone; (height, width) that exercise padding.
BACKBONES = {
    'slab_pvt': dict(cfg=dict(PVT_MINI, attn_types='LSLS', la_sr_ratios=(2, 1, 1, 1)), size=(64, 80),
                     frozen_prefixes=pvt_frozen_prefixes),
    'slab_swin': dict(cfg=dict(SWIN_MINI, attn_types='LSLS', window_sizes=(7, 7, 7, 7)), size=(100, 120),
                      frozen_prefixes=swin_frozen_prefixes),
}


@pytest.fixture(params=sorted(BACKBONES))
def backbone(request):
    return BACKBONES[request.param]


@pytest.mark.parametrize('frozen_stages', [0, 1, 2])
def test_frozen_stages_stay_frozen(backbone, frozen_stages):
    model = build_backbone(dict(backbone['cfg'], frozen_stages=frozen_stages))
    assert_frozen_stages(model, backbone['frozen_prefixes'](frozen_stages))


def test_norm_eval_keeps_batchnorm_statistics(backbone):
    assert_norm_eval(build_backbone(dict(backbone['cfg'], norm_eval=True)))


def test_activation_checkpointing_gives_same_outputs_and_gradients(backbone):
    assert_checkpointing_equivalent(backbone['cfg'], *backbone['size'])


def test_weights_round_trip_through_state_dict_and_pretrained_checkpoints(backbone, tmp_path):
    assert_save_load_round_trip(backbone['cfg'], tmp_path)


def test_norm_eval_refuses_frozen_statistics_that_were_never_estimated(backbone):
    import torch
    from testing_utils.backbone_utils import set_prepbn_g
    model = build_backbone(dict(backbone['cfg'], norm_eval=True))
    set_prepbn_g(model, 0.5)
    model.train()
    with pytest.raises(RuntimeError, match=r'norm_eval=True .* \S+\.repbn\.bn has never estimated them'):
        model(torch.randn(1, 3, *backbone['size']))
    set_prepbn_g(model, 1.0)   # a PRepBN at g = 1 does not use its BatchNorm yet
    model(torch.randn(1, 3, *backbone['size']))


def test_output_norms_follow_out_norm_cfg_and_default_to_layernorm_under_norm_eval(backbone):
    import torch.nn as nn
    from slab_mmdet.models.layers import PRepBN
    default = build_backbone(backbone['cfg'])
    assert all(isinstance(getattr(default, f'norm{i}'), PRepBN) for i in default.out_indices)
    frozen = build_backbone(dict(backbone['cfg'], norm_eval=True))
    assert all(type(getattr(frozen, f'norm{i}')) is nn.LayerNorm for i in frozen.out_indices)
    assert all(not isinstance(m, PRepBN) for i in frozen.out_indices for m in getattr(frozen, f'norm{i}').modules())
    chosen = build_backbone(dict(backbone['cfg'], norm_eval=True, out_norm_cfg=dict(type='PRepBN')))
    assert all(isinstance(getattr(chosen, f'norm{i}'), PRepBN) for i in chosen.out_indices)
    with pytest.raises(ValueError, match=r"out_norms_folded=True, but out_norm_cfg type 'LN' cannot be folded"):
        build_backbone(dict(backbone['cfg'], deploy=True, out_norms_folded=True, out_norm_cfg=dict(type='LN')))


def test_checkpoints_that_would_load_into_the_wrong_structure_are_refused(backbone, tmp_path):
    """Fused into training, unfused into deploy, an unconverted released checkpoint or one
    that fills none of the backbone's keys: each an error naming the fix, through
    load_state_dict (what load_from, mmdet's test.py and DetInferencer reach) and init_cfg."""
    import copy

    import torch
    from testing_utils.backbone_utils import estimate_bn_statistics, set_prepbn_g
    trained = build_backbone(backbone['cfg'])
    set_prepbn_g(trained, 0.0)
    estimate_bn_statistics(trained)
    unfused_state = trained.state_dict()
    fused = copy.deepcopy(trained).eval()
    fused.switch_to_deploy()
    fused_state = fused.state_dict()

    with pytest.raises(ValueError, match=r'built for training .* it is a fused checkpoint\. Use it with the deploy '
                                         r'config that tools/fuse_norms\.py wrote'):
        build_backbone(backbone['cfg']).load_state_dict(fused_state, strict=False)
    deployed = build_backbone(dict(backbone['cfg'], deploy=True))
    with pytest.raises(ValueError, match=r'deploy=True .* the checkpoint is unfused: it has \d+ PRepBN weights .* '
                                         r'python tools/fuse_norms\.py'):
        deployed.load_state_dict(unfused_state, strict=False)
    deployed.load_state_dict(fused_state, strict=True)   # the right pairing loads
    with pytest.raises(ValueError, match=r"fills none of the backbone's \d+ weights \(its keys: none\)"):
        build_backbone(backbone['cfg']).load_state_dict({}, strict=False)
    foreign = {'patch_embed1.proj.weight': torch.zeros(1), 'block1.0.norm1.weight': torch.zeros(1),
               'layers.0.blocks.0.attn.qkv.weight': torch.zeros(1)}
    with pytest.raises(ValueError, match=r'layout of a released PVT/Swin model .* python tools/convert_checkpoint\.py'):
        build_backbone(backbone['cfg']).load_state_dict(foreign, strict=False)
    # The same through init_cfg (a detector checkpoint, as a user would pass by mistake).
    path = tmp_path / 'fused_detector.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in fused_state.items()}}, path)
    with pytest.raises(ValueError, match='it is a fused checkpoint'):
        build_backbone(dict(backbone['cfg'], init_cfg=dict(type='Pretrained', checkpoint=str(path))))
    # A checkpoint without the output norms (a converted ImageNet model) still loads.
    partial = {k: v for k, v in unfused_state.items() if not k.startswith('norm')}
    build_backbone(backbone['cfg']).load_state_dict(partial, strict=False)


def test_empty_batches_and_training_a_fused_model_are_refused(backbone):
    import torch
    model = build_backbone(backbone['cfg']).eval()
    with pytest.raises(ValueError, match=r'expects a non-empty \(B, C, H, W\) batch, got shape \(0, 3, '):
        model(torch.zeros(0, 3, *backbone['size']))
    fused = build_backbone(dict(backbone['cfg'], deploy=True)).train()
    with pytest.raises(RuntimeError, match=r'deploy=True .* inference only; train the unfused model'):
        fused(torch.randn(1, 3, *backbone['size']))
    with torch.no_grad():   # a forward without gradients (e.g. a validation in train mode) is fine
        fused(torch.randn(1, 3, *backbone['size']))


@pytest.mark.parametrize('content', ['tensor', 'list'])
def test_a_checkpoint_that_is_no_state_dict_is_refused_in_init_cfg(backbone, tmp_path, content):
    import torch
    path = tmp_path / 'weights.pth'
    torch.save(torch.zeros(3) if content == 'tensor' else [torch.zeros(3)], path)
    kind = 'Tensor' if content == 'tensor' else 'list'
    with pytest.raises(ValueError, match=rf'holds a {kind}, not a state dict'):
        build_backbone(dict(backbone['cfg'], init_cfg=dict(type='Pretrained', checkpoint=str(path))))


@pytest.mark.parametrize('deploy', [False, True], ids=['unfused', 'fused'])
def test_outputs_are_contiguous_nchw_at_every_batch_size(backbone, deploy):
    """mmdet's backbones return contiguous NCHW maps, and mmcv's CPU RoIAlign relies on it:
    given the channels-last view that (B, N, C) tokens transpose into for B > 1, it reads
    wrong RoI features. That is what broke training at two images per batch (the
    anneal 'diverged'): the RoI heads learned from corrupted features."""
    import torch
    cfg = dict(backbone['cfg'], deploy=deploy)
    model = build_backbone(cfg).eval()
    for batch in (1, 2, 3):
        with torch.no_grad():
            outs = model(torch.randn(batch, 3, *backbone['size']))
        assert all(o.is_contiguous() for o in outs), [o.stride() for o in outs]


@pytest.mark.parametrize('deploy', [False, True], ids=['unfused', 'fused'])
def test_every_linear_reads_contiguous_tokens(backbone, deploy):
    """Fused models have no norm between the patch embedding (or a spatial reduction) and
    the next linear: their tokens must still be stored (B, N, C) row by row, or every linear
    and residual add of the stage runs on strided memory (a matmul plus a copy instead of one
    addmm)."""
    import torch
    model = build_backbone(dict(backbone['cfg'], deploy=deploy)).eval()
    strided = []

    def check(module, args):
        if not args[0].is_contiguous():
            strided.append((names[module], tuple(args[0].shape), args[0].stride()))

    names = {m: n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for m in names:
        m.register_forward_pre_hook(check)
    with torch.no_grad():
        model(torch.randn(2, 3, *backbone['size']))
    assert strided == []


def test_the_backbone_folds_its_output_norms_into_the_layers_that_read_them(backbone):
    """fold_output_norms_into: each output equals the conv of the normalised output, and the
    backbone records that its output norms are gone (the deploy config's flag)."""
    import torch
    import torch.nn as nn
    from testing_utils.helpers import anneal_and_randomise_norms
    model = anneal_and_randomise_norms(build_backbone(backbone['cfg'])).eval()
    model.switch_to_deploy()
    convs = [nn.Conv2d(c, 5, 1) for c in (model.num_features[i] for i in model.out_indices)]
    x = torch.randn(1, 3, *backbone['size'])
    with torch.no_grad():
        want = [conv(out) for conv, out in zip(convs, model(x))]
        model.fold_output_norms_into(convs)
        got = [conv(out) for conv, out in zip(convs, model(x))]
    assert model.out_norms_folded
    assert all(isinstance(getattr(model, f'norm{i}'), nn.Identity) for i in model.out_indices)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match='folded already'):
        model.fold_output_norms_into(convs)


def test_folding_output_norms_refuses_what_does_not_fit_and_changes_nothing(backbone):
    import torch.nn as nn
    from slab_mmdet.models.layers import FusionError
    from testing_utils.helpers import anneal_and_randomise_norms
    model = anneal_and_randomise_norms(build_backbone(backbone['cfg'])).eval()
    channels = [model.num_features[i] for i in model.out_indices]
    with pytest.raises(FusionError, match=r'fold the body first \(switch_to_deploy\(\)\)'):
        model.fold_output_norms_into([nn.Conv2d(c, 5, 1) for c in channels])
    model.switch_to_deploy()
    with pytest.raises(FusionError, match=rf'1 layers for {len(channels)} outputs'):
        model.fold_output_norms_into([nn.Conv2d(channels[0], 5, 1)])
    with pytest.raises(FusionError, match=rf'layer 1 \(Conv2d\) reads 7 channels, output 1 has {channels[1]}'):
        model.fold_output_norms_into([nn.Conv2d(c if k != 1 else 7, 5, 1) for k, c in enumerate(channels)])
    with pytest.raises(FusionError, match='layer 0 zero-pads its input'):
        model.fold_output_norms_into([nn.Conv2d(c, 5, 3, padding=1) for c in channels])
    assert not model.out_norms_folded
    assert not any(isinstance(getattr(model, f'norm{i}'), nn.Identity) for i in model.out_indices)
    ln_outputs = anneal_and_randomise_norms(build_backbone(dict(backbone['cfg'], out_norm_cfg=dict(type='LN')))).eval()
    ln_outputs.switch_to_deploy()
    with pytest.raises(FusionError, match=r'output norms are LN \(out_norm_cfg\), which cannot be folded'):
        ln_outputs.fold_output_norms_into([nn.Conv2d(c, 5, 1) for c in channels])


def test_an_unknown_argument_is_refused_not_ignored(backbone):
    with pytest.raises(TypeError, match="unexpected keyword argument 'windows_size'"):
        build_backbone(dict(backbone['cfg'], windows_size=7))


def test_training_one_image_too_small_for_batch_statistics_is_refused_with_the_smallest_size(backbone):
    """A 32x32 image at batch 1 leaves one token at stride 32: BatchNorm has one value per
    channel. Refused naming the smallest size; 32x64 trains, and so do 2 images of 32x32 or
    a model still at g = 1 (LayerNorm only)."""
    import torch
    from testing_utils.backbone_utils import set_prepbn_g
    model = build_backbone(backbone['cfg']).train()
    set_prepbn_g(model, 0.5)
    with pytest.raises(ValueError, match=r'needs at least 2 values per channel .* a batch of 1 of 32x32 pixels '
                                         r'leaves 1 token\(s\) at stride 32\. Train on inputs of at least 32x64'):
        model(torch.randn(1, 3, 32, 32))
    model(torch.randn(1, 3, 32, 64))
    model(torch.randn(2, 3, 32, 32))
    set_prepbn_g(model, 1.0)
    model(torch.randn(1, 3, 32, 32))


def test_a_subclass_missing_part_of_the_contract_is_refused_when_created():
    """What every SLAB backbone must define is checked when the class is created, naming it."""
    from slab_mmdet.models.backbones.base import SLABBackboneBase
    from slab_mmdet.models.backbones.slab_pvt import SLABPyramidVisionTransformer

    with pytest.raises(TypeError, match=r'Half does not define stage_channels\(\), _stem_modules\(\), which every '
                                        r'SLABBackboneBase subclass must'):
        class Half(SLABBackboneBase):
            arch_zoo = dict(tiny=dict(depths=(1,)))
            ARCH_KEYS = ARCH_STAGE_KEYS = ('depths',)

            def forward(self, x):
                return x
    with pytest.raises(TypeError, match=r"NoTiny.arch_zoo has no 'tiny' arch .* only \['small'\]"):
        class NoTiny(SLABPyramidVisionTransformer):
            arch_zoo = dict(small=SLABPyramidVisionTransformer.arch_zoo['small'])

    class Wider(SLABPyramidVisionTransformer):   # a subclass that inherits the whole contract is fine
        pass
    assert Wider.stage_channels('tiny') == SLABPyramidVisionTransformer.stage_channels('tiny')
