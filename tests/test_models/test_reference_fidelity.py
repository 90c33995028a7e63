"""Our backbones reproduce the authors' classification models at 224x224.

The goldens (tests/data/reference_golden_*.pt) hold a reference-format state dict of
a small random network, an input, and the reference code's stage outputs; see
tests/data/make_reference_goldens.py for how they were made. Here the state dict
goes through our converter into our backbone, which must give the same stage
outputs (before the output norms) in eval mode (g = 0, as the released checkpoints)
and in train mode (g = 0.5: the LayerNorm/RepBN mix with batch statistics).
"""
import os.path as osp

import pytest
import torch
from mmdet.registry import MODELS

from slab_mmdet.converters import convert_reference_state_dict
from slab_mmdet.models.layers import iter_prepbn
from testing_utils import TEST_DATA_DIR

DATA = TEST_DATA_DIR


def load_golden(name):
    return torch.load(osp.join(DATA, f'reference_golden_{name}.pt'), weights_only=True)


def stage_features(backbone, x):
    """Each stage's tokens after its last block, before output norms / downsampling."""
    feats = []
    hooks = [stage.blocks[-1].register_forward_hook(lambda m, i, o: feats.append(o)) for stage in backbone.stages]
    with torch.no_grad():
        backbone(x)
    for h in hooks:
        h.remove()
    return feats


@pytest.mark.parametrize('name, expected', [
    ('pvt', dict(type='SLABPyramidVisionTransformer', attn_types='LSLL', la_sr_ratios=(8, 1, 2, 1))),
    ('swin', dict(type='SLABSwinTransformer', attn_types='LLSS', window_sizes=(56, 28, 7, 7))),
])
def test_converted_backbone_matches_reference_outputs(name, expected):
    golden = load_golden(name)
    state_dict, report = convert_reference_state_dict(golden['state_dict'])
    for key, value in expected.items():
        assert report.backbone_cfg[key] == value
    assert report.unmapped == []
    assert any(k.startswith('head.') for k, _ in report.dropped)

    backbone = MODELS.build(dict(report.backbone_cfg, drop_path_rate=0.0))
    missing, unexpected = backbone.load_state_dict(state_dict, strict=False)
    assert unexpected == []
    # Only the detection output norms are new (the reference has a final norm for
    # the last stage only, which becomes the last output norm of Swin).
    last = len(backbone.stages) - 1
    allowed_missing = {f'norm{i}' for i in range(last + (name == 'pvt'))}
    assert {k.split('.')[0] for k in missing} <= allowed_missing, missing
    assert all(m.g_value == 0.0 for _, m in iter_prepbn(backbone) if not _.startswith('norm'))

    x = golden['input'].float()
    backbone.eval()
    for got, want in zip(stage_features(backbone, x), golden['eval_g0']):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5)

    backbone.train()
    for _, m in iter_prepbn(backbone):
        m.set_g(0.5)
    for got, want in zip(stage_features(backbone, x), golden['train_g05']):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5)
