"""The latency benchmark's report (slab_mmdet.benchmark.report): the paired ratio, the
median of per-image ratios."""
import numpy as np
import pytest

from slab_mmdet.benchmark.report import format_paired, paired_ratio


def test_paired_ratio_is_the_median_of_per_image_ratios():
    """Each image's time over the reference's time for the same image (one round), so a slow
    round of the machine cancels; the mean of the totals does not cancel it."""
    reference = [100.0, 100.0, 300.0, 100.0, 100.0]   # the third round ran on a busy machine
    model = [70.0, 80.0, 240.0, 75.0, 90.0]
    paired = paired_ratio(model, reference)
    assert paired['median'] == pytest.approx(0.8) and paired['n'] == 5
    assert paired['p10'] == pytest.approx(np.percentile([0.7, 0.8, 0.8, 0.75, 0.9], 10))
    assert paired['p90'] == pytest.approx(np.percentile([0.7, 0.8, 0.8, 0.75, 0.9], 90))
    assert sum(model) / sum(reference) == pytest.approx(555 / 700)   # what the mean ratio would say
    assert format_paired(paired) == '0.800 (0.72-0.86)'
    assert format_paired(None) == '–'
