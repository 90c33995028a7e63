"""benchmarks/fast_paths.py: its 'plain' variant runs the backbone with the fast paths off (and
only that copy), and the ratios it reports pair the right models."""
import os.path as osp

import pytest
import torch
import torch.nn as nn

from slab_mmdet.benchmark import BenchModel
from slab_mmdet.models.layers.fast_paths import fast_path
from testing_utils import REPO_ROOT
from testing_utils.helpers import load_script


@pytest.fixture
def script(monkeypatch):
    """The script, importing its folder's bootstrap as it does when run."""
    monkeypatch.syspath_prepend(osp.join(REPO_ROOT, 'benchmarks'))
    return load_script('benchmarks/fast_paths.py', 'fast_paths_benchmark_under_test')


class ProbeBackbone(nn.Module):
    """Records whether a fast path may run inside its forward."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(fast_path(x))
        return x


class Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = ProbeBackbone()


def test_plain_variant_turns_the_fast_paths_off_in_its_own_copy_only(script):
    original = BenchModel(name='m', config='c.py', model=Detector().eval(), pipeline=None)
    plain = script.plain_variant(original)
    assert plain.name == 'm' + script.PLAIN_SUFFIX and plain.model is not original.model
    with torch.no_grad():
        plain.model.backbone(torch.zeros(1))
        original.model.backbone(torch.zeros(1))
        assert fast_path(torch.zeros(1))            # nothing left switched off
    assert plain.model.backbone.seen == [False] and original.model.backbone.seen == [True]


def test_ratios_pair_slab_with_twin_and_each_model_with_its_plain_run(script):
    # Models in the script's order: twin, SLAB, twin plain, SLAB plain; times make every ratio distinct.
    ms = [[100.0, 200.0], [60.0, 120.0], [125.0, 250.0], [90.0, 180.0]]
    summary = dict(models=[dict(raw=dict(total_ms=[t * 3 for t in m], breakdown_ms=dict(backbone=m))) for m in ms])
    ratios = script.family_ratios(summary)
    assert ratios['slab_vs_twin']['backbone']['median'] == 0.6
    assert ratios['slab_vs_twin_plain']['backbone']['median'] == 0.72
    assert ratios['twin_blocked_vs_plain']['detector']['median'] == 0.8
    assert abs(ratios['slab_blocked_vs_plain']['detector']['median'] - 2 / 3) < 1e-12
    assert set(ratios) == {name for name, _, _ in script.RATIOS}
