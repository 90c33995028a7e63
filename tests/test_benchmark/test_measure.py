"""The latency benchmark's measurements (slab_mmdet.benchmark.measure): statistics of the
timings, the per-part timer (with a fake clock) and the peak-memory probe."""
import numpy as np
import pytest
import torch
from torch import nn

from slab_mmdet.benchmark import PartTimer, memory_probe, summarize_timings
from slab_mmdet.benchmark.measure import RssPeakMemory
from testing_utils.benchmark_utils import FakeClock


def test_summarize_timings_matches_numpy():
    ms = [12.0, 10.0, 11.0, 30.0, 10.5]
    stats = summarize_timings(ms)
    assert stats['n'] == 5
    assert stats['mean'] == pytest.approx(np.mean(ms))
    assert stats['median'] == pytest.approx(11.0)
    assert stats['p90'] == pytest.approx(np.percentile(ms, 90))
    assert stats['p99'] == pytest.approx(np.percentile(ms, 99))
    assert stats['std'] == pytest.approx(np.std(ms, ddof=1))
    assert stats['images_per_s'] == pytest.approx(1000 / np.mean(ms))
    assert summarize_timings([5.0])['std'] == 0.0
    with pytest.raises(ValueError):
        summarize_timings([])

class _Part(nn.Module):
    def __init__(self, clock, seconds, inner=None):
        super().__init__()
        self.clock, self.seconds, self.inner = clock, seconds, inner

    def forward(self, x):
        self.clock.advance(self.seconds)
        return self.inner(x) if self.inner is not None else x

    def predict(self, x):
        return self.forward(x)

def test_part_timer_accounts_outermost_parts_and_restores_methods():
    clock = FakeClock()
    toy = nn.Module()
    toy.neck = _Part(clock, 0.002)
    toy.backbone = _Part(clock, 0.010, inner=toy.neck)   # the neck runs inside the backbone here
    toy.bbox_head = _Part(clock, 0.003)
    timer = PartTimer(toy, clock=clock)
    assert timer.parts == ['backbone', 'neck', 'bbox_head']
    with timer:
        toy.bbox_head.predict(toy.backbone(torch.zeros(1)))
        toy.neck(torch.zeros(1))
    assert timer.elapsed['backbone'] == pytest.approx(0.012)   # includes the nested neck call
    assert timer.elapsed['neck'] == pytest.approx(0.002)       # only the top-level call
    assert timer.elapsed['bbox_head'] == pytest.approx(0.003)
    for part, method in (('backbone', 'forward'), ('neck', 'forward'), ('bbox_head', 'predict')):
        assert method not in vars(getattr(toy, part))
    timer.reset()
    assert set(timer.elapsed.values()) == {0.0}

def test_rss_probe_measures_a_calls_peak_not_what_it_keeps():
    probe = memory_probe('cpu')
    assert isinstance(probe, RssPeakMemory) and not probe.in_timed_pass
    probe.start()
    block = np.ones(64 * 1024 ** 2 // 8)   # 64 MiB, touched, then freed before stop()
    del block
    growth, device_peak = probe.stop()
    assert growth >= 60 and device_peak is None
