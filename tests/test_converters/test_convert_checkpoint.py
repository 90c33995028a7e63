"""tools/convert_checkpoint.py end to end on a reference-layout checkpoint (the golden state dict
of tests/data): DST loads into the detected backbone through init_cfg, g = iter / total_step,
the head is reported dropped, unknown keys are reported, a tampered shape is refused naming the
key; and its errors for bad input."""
import re

import pytest
import torch
from mmdet.registry import MODELS
from testing_utils.converter_utils import golden_state_dict, reference_config, run_cli, save_like_reference_training

import slab_mmdet  # noqa: F401  (registers modules, allow-lists mmengine types)
from slab_mmdet.models.layers import iter_prepbn


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


def test_each_converter_registers_its_layout_and_the_backbones_name_it():
    """The layouts the backbones recognise as released models are the converters' own (one
    signature per converter module), and a backbone refusing such a checkpoint names its model."""
    from slab_mmdet.converters import LAYOUTS
    from slab_mmdet.converters.pipeline import detect_layout
    from slab_mmdet.models.backbones.checkpoint_fit import SOURCE_LAYOUTS
    from testing_utils.backbone_utils import PVT_MINI, build_backbone
    assert set(SOURCE_LAYOUTS) == {f'{family}_{arch}' for family, arch in LAYOUTS}
    samples = {'reference_pvt': 'patch_embed1.proj.weight', 'reference_swin': 'layers.0.blocks.0.attn.qkv.weight',
               'mmdet_pvt': 'layers.0.1.attn.attn.in_proj_weight',
               'mmdet_swin': 'stages.0.blocks.0.attn.w_msa.qkv.weight'}
    for layout, key in samples.items():
        family, arch = layout.split('_')
        assert detect_layout({key: torch.zeros(1)}) == (family, arch)
        with pytest.raises(ValueError, match=re.escape(f'released PVT/Swin model ({LAYOUTS[family, arch][0]}; ')):
            build_backbone(PVT_MINI).load_state_dict({key: torch.zeros(1)}, strict=False)
