"""tools/convert_checkpoint.py and slab_mmdet.converters.

* Loading: a checkpoint saved like the SLAB authors' training script, whose pickled
  training config is a foreign dict subclass (standing in for yacs' CfgNode) that would
  write a marker file if its code ran, loads as inert data; other foreign objects that
  weights-only loading cannot build fail with a clear error.
* The CLI end to end on a reference-layout checkpoint (the golden state dict of
  tests/data): DST loads into the detected backbone through init_cfg, g = iter /
  total_step, the head is reported dropped, unknown keys are reported, a tampered
  shape is refused naming the key; and its errors for bad input.
* mmdet's LayerNorm PVT and Swin convert into SSSS PRepBN backbones (g = 1) with the
  same stage features; a detector checkpoint keeps its neck.
"""
import importlib
import importlib.util
import os.path as osp
import re
import sys
import uuid

import pytest
import torch
from mmdet.models.backbones import PyramidVisionTransformer, PyramidVisionTransformerV2, SwinTransformer
from mmdet.registry import MODELS

import slab_mmdet  # noqa: F401  (registers modules, allow-lists mmengine types)
from slab_mmdet.converters import (ConversionError, convert_mmdet_state_dict, convert_reference_state_dict,
                                   convert_state_dict,
                                       foreign_class_of, load_checkpoint_safely)
from slab_mmdet.models.layers import iter_prepbn
from testing_utils import TEST_DATA_DIR
from testing_utils.helpers import load_script

MARKER_TEXT = 'code from the checkpoint ran'

# A module standing in for yacs: unpickling its objects with their real classes writes
# a marker file (CfgNode.__setstate__, and Trap's __reduce__ calling write_marker).
TRAP_SOURCE = f'''
import pathlib


def write_marker(path):
    pathlib.Path(path).write_text({MARKER_TEXT!r})


class CfgNode(dict):
    def __init__(self, items=None, marker=None):
        super().__init__(items or {{}})
        self.__dict__['marker'] = marker

    def __setstate__(self, state):
        write_marker(state['marker'])
        self.__dict__.update(state)


class Trap:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (write_marker, (self.marker,))


class ListNode(list):
    pass
'''


@pytest.fixture
def trap_module(tmp_path, monkeypatch):
    """An importable throwaway module (made unimportable by ``make_unimportable``)."""
    name = f'slab_convert_trap_{uuid.uuid4().hex[:8]}'
    path = tmp_path / 'trap' / f'{name}.py'
    path.parent.mkdir()
    path.write_text(TRAP_SOURCE)
    monkeypatch.syspath_prepend(str(path.parent))
    module = importlib.import_module(name)

    def make_unimportable():
        sys.modules.pop(name, None)
        path.unlink()
        importlib.invalidate_caches()
        with pytest.raises(ImportError):
            importlib.import_module(name)

    module.make_unimportable = make_unimportable
    yield module
    sys.modules.pop(name, None)


def save_like_reference_training(path, state_dict, config):
    """What the authors' classification/utils.py save_checkpoint writes."""
    torch.save({'model': state_dict, 'optimizer': {'state': {}, 'param_groups': [{'lr': 5e-4, 'params': [0]}]},
                'lr_scheduler': {'last_epoch': 299}, 'max_accuracy': 76.5, 'epoch': 299, 'config': config}, path)


def reference_config(trap, marker):
    model = trap.CfgNode({'NAME': 'slab_pvt_tiny', 'TYPE': 'slab_pvt_tiny'}, marker=str(marker))
    return trap.CfgNode({'MODEL': model, 'HOOK': trap.Trap(str(marker))}, marker=str(marker))


def golden_state_dict(name):
    return torch.load(osp.join(TEST_DATA_DIR, f'reference_golden_{name}.pt'), weights_only=True)['state_dict']


def load_cli():
    return load_script('tools/convert_checkpoint.py', 'convert_checkpoint_cli')


def run_cli(args):
    """``main(args)``; returns the SystemExit message, or None when it succeeds."""
    try:
        assert load_cli().main([str(a) for a in args]) == 0
    except SystemExit as e:
        return str(e.code)
    return None


# ------------------------------------------------------------------------------ loading


def test_foreign_training_config_loads_as_inert_data_without_running_code(tmp_path, trap_module):
    marker = tmp_path / 'MARKER'
    weights = golden_state_dict('pvt')
    src = tmp_path / 'ckpt.pth'
    save_like_reference_training(src, weights, reference_config(trap_module, marker))
    name = trap_module.__name__

    def check_loaded():
        ckpt, foreign = load_checkpoint_safely(str(src))
        assert not marker.exists()
        assert set(foreign) == {f'{name}.CfgNode', f'{name}.write_marker'}
        config = ckpt['config']
        assert foreign_class_of(config) == f'{name}.CfgNode'
        assert config['MODEL']['NAME'] == 'slab_pvt_tiny'           # the items survive, as data
        assert config.marker == str(marker)                         # so does the instance state
        assert foreign_class_of(config['HOOK']) == f'{name}.write_marker'
        assert config['HOOK'].pickled_args == (str(marker),)        # the call is recorded, not made
        assert ckpt['epoch'] == 299 and ckpt['max_accuracy'] == 76.5
        assert ckpt['model'].keys() == weights.keys()
        assert all(torch.equal(ckpt['model'][k], v) for k, v in weights.items())
        return ckpt

    check_loaded()   # the trap's module is importable: still nothing of it runs
    # Control: a full unpickling does run the trap.
    torch.load(src, weights_only=False)
    assert marker.read_text() == MARKER_TEXT
    marker.unlink()
    trap_module.make_unimportable()   # like a machine without yacs
    _, report = convert_state_dict(check_loaded()['model'])
    assert report.unmapped == [] and report.backbone_cfg['attn_types'] == 'LSLL'
    assert not marker.exists()


@pytest.mark.parametrize('make, named', [
    (lambda trap, marker: trap.ListNode([1, 2]), 'ListNode'),
    (lambda trap, marker: type('Sys', (), {'__reduce__': lambda self: (__import__('os').system,
                                                                        (f'echo > {marker}',))})(),
     r'(posix|os|nt)\.system'),
], ids=['list-subclass', 'reduce-to-os.system'])
def test_foreign_objects_that_cannot_be_read_as_data_fail_clearly(tmp_path, trap_module, make, named):
    marker = tmp_path / 'MARKER'
    src = tmp_path / 'ckpt.pth'
    torch.save({'model': {'w': torch.ones(2)}, 'extra': make(trap_module, marker)}, src)
    with pytest.raises(ConversionError) as info:
        load_checkpoint_safely(str(src))
    message = str(info.value)
    assert re.search(named, message) and 'No code from the checkpoint was run' in message
    assert not marker.exists()


# ------------------------------------------------------------------- reference checkpoints

REFERENCE_NORM = re.compile(r'(patch_embed(\d)\.norm|block(\d)\.(\d+)\.(norm1|norm2|attn\.norm))\.total_step')


def our_norm_name(match):
    """Reference LinearNorm name -> our PRepBN name (written independently of the converter)."""
    if match[2]:
        return f'stages.{int(match[2]) - 1}.patch_embed.norm'
    return f'stages.{int(match[3]) - 1}.blocks.{match[4]}.{match[5]}'


def annealing_reference_state_dict():
    """The golden SLAB-PVT state dict with every LinearNorm at a different point of its
    schedule (one still warming up) and an extra key no model has; returns it and the
    expected g per PRepBN."""
    sd = golden_state_dict('pvt')
    expected = {}
    for n, key in enumerate(k for k in list(sd) if REFERENCE_NORM.fullmatch(k)):
        prefix = key[:-len('.total_step')]
        sd[prefix + '.iter'] = torch.tensor(37 * n % 1000)
        sd[prefix + '.total_step'] = torch.tensor(1000)
        expected[our_norm_name(REFERENCE_NORM.fullmatch(key))] = 37 * n % 1000 / 1000
    warming = 'block2.0.norm2'
    sd[warming + '.warm'] = torch.tensor(5)
    expected[our_norm_name(REFERENCE_NORM.fullmatch(warming + '.total_step'))] = 1.0
    sd['extra.unknown'] = torch.zeros(3)
    return sd, expected


def test_cli_converts_reference_checkpoint(tmp_path, trap_module, capsys):
    sd, expected_g = annealing_reference_state_dict()
    src, dst = tmp_path / 'slab_pvt.pth', tmp_path / 'out' / 'slab_pvt_mmdet.pth'
    save_like_reference_training(src, sd, reference_config(trap_module, tmp_path / 'MARKER'))
    assert run_cli([src, dst]) is None
    out = capsys.readouterr().out
    assert not (tmp_path / 'MARKER').exists()

    ckpt = torch.load(dst, weights_only=True)
    meta = ckpt['meta']
    cfg = dict(type='SLABPyramidVisionTransformer', attn_types='LSLL', la_sr_ratios=(8, 1, 2, 1),
               arch=dict(embed_dims=(16, 32, 40, 64), num_heads=(1, 2, 5, 8), mlp_ratios=(2, 2, 2, 2),
                         sr_ratios=(8, 4, 2, 1), depths=(2, 1, 1, 1)))
    assert meta['backbone'] == cfg and meta['family'] == 'reference'
    assert ['head.weight', 'classification head'] in meta['dropped']
    assert [k for k, _ in meta['unmapped']] == ['extra.unknown']
    # What the user is told: the config to paste, and the summary.
    assert "type='SLABPyramidVisionTransformer'" in out and "attn_types='LSLL'" in out
    assert f"init_cfg=dict(type='Pretrained', checkpoint='{dst}')" in out
    assert 'neck=dict(in_channels=[16, 32, 40, 64])' in out
    assert 'dropped (classification head): head.weight, head.bias' in out
    assert re.search(r'could not map extra\.unknown', out)
    assert f'PRepBN layers with g from the checkpoint: {len(expected_g)}, g in [0, 1]' in out
    assert "the checkpoint's training config names the model 'slab_pvt_tiny'" in out

    backbone = MODELS.build(dict(meta['backbone'], init_cfg=dict(type='Pretrained', checkpoint=str(dst))))
    backbone.init_weights()
    own = backbone.state_dict()
    output_norms = {k for k in own if re.match(r'norm\d\.', k)}
    assert set(ckpt['state_dict']) == set(own) - output_norms   # strict but for the output norms
    for key, value in ckpt['state_dict'].items():
        assert torch.equal(own[key], value), key
    prepbn = dict(iter_prepbn(backbone))
    assert {n: m.g_value for n, m in prepbn.items() if not n.startswith('norm')} == pytest.approx(expected_g)
    assert all(float(prepbn[n].g) == pytest.approx(g) for n, g in expected_g.items())
    # The reference weights land in the LayerNorm and RepBN branches.
    assert torch.equal(own['stages.0.blocks.0.norm1.ln.weight'], sd['block1.0.norm1.norm1.weight'])
    assert torch.equal(own['stages.0.blocks.0.norm1.repbn.alpha'], sd['block1.0.norm1.norm2.alpha'])
    assert torch.equal(own['stages.0.blocks.0.attn.value_conv.dwc.weight'], sd['block1.0.attn.dwc.weight'])


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


def test_cli_refuses_bad_input(tmp_path):
    sd = golden_state_dict('pvt')
    src, dst = tmp_path / 'src.pth', tmp_path / 'dst.pth'
    torch.save({'model': sd}, src)

    assert 'does not exist' in run_cli([tmp_path / 'missing.pth', dst])
    dst.write_bytes(b'keep me')
    assert 'already exists' in run_cli([src, dst]) and dst.read_bytes() == b'keep me'
    assert 'is the source checkpoint itself' in run_cli([src, src, '--force'])
    assert run_cli([src, dst, '--force']) is None and 'state_dict' in torch.load(dst, weights_only=True)
    assert 'already in the layout of slab_mmdet backbones' in run_cli([dst, tmp_path / 'again.pth'])

    message = run_cli([src, dst, '--force', '--family', 'mmdet'])
    assert "family 'mmdet' was asked for" in message and 'reference' in message

    tampered = dict(sd, **{'block1.1.attn.proj.weight': torch.zeros(16, 15)})
    torch.save({'model': tampered}, src)
    message = run_cli([src, dst, '--force'])
    assert 'shape mismatch' in message
    assert 'stages.0.blocks.1.attn.proj.weight (from block1.1.attn.proj.weight): checkpoint (16, 15), ' \
           'SLABPyramidVisionTransformer expects (16, 16)' in message

    torch.save({'model': {'fc.weight': torch.zeros(2, 2)}}, src)
    assert 'unrecognised checkpoint' in run_cli([src, dst, '--force'])
    src.write_bytes(b'not a checkpoint')
    assert 'is not a zip checkpoint' in run_cli([src, dst, '--force'])
    # The legacy (pre-1.6) format is a checkpoint too: it converts like any other.
    torch.save({'model': sd}, src, _use_new_zipfile_serialization=False)
    assert run_cli([src, dst, '--force']) is None and 'state_dict' in torch.load(dst, weights_only=True)


# ------------------------------------------------------------------------ mmdet checkpoints


def randomise(model, seed=0):
    """Random weights, LayerNorm affines away from (1, 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if not value.dtype.is_floating_point:
                continue
            if value.dim() == 1 and key.endswith('weight'):
                value.copy_(1 + 0.3 * torch.randn(value.shape, generator=gen))
            else:
                value.copy_((0.3 if value.dim() == 1 else 0.05) * torch.randn(value.shape, generator=gen))
    model.eval()   # (mmdet's SwinTransformer.train returns None)
    return model


def block_outputs(model, blocks, x):
    """Outputs of the given blocks (each stage's last) in a forward pass."""
    outs = []
    hooks = [b.register_forward_hook(lambda m, i, o: outs.append(o)) for b in blocks]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return outs


def build_converted(state_dict, report):
    ours = MODELS.build(dict(report.backbone_cfg, drop_path_rate=0.0))
    missing, unexpected = ours.load_state_dict(state_dict, strict=False)
    assert unexpected == [] and all(re.match(r'norm\d\.', k) for k in missing), missing
    assert all(m.g_value == 1.0 for n, m in iter_prepbn(ours))
    return ours.eval()


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
