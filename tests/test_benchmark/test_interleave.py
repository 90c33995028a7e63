"""The interleaved benchmark loop (slab_mmdet.benchmark.interleave): the call order, what the
timed region contains (a fake clock that only preprocessing and chosen model parts advance),
the per-part breakdown of two- and one-stage detectors, and the latency-only mode."""
import os.path as osp

import numpy as np
import pytest

from slab_mmdet.benchmark import (benchmark_detectors, load_models, machine_facts, render_markdown, select_images,
                                  summarize_result)
from slab_mmdet.benchmark.images import list_mini_coco_val
from testing_utils import REPO_ROOT
from testing_utils.benchmark_utils import MASK_RCNN, FakeClock, advance_on_call, write_small_config


@pytest.fixture
def small_configs(tmp_path):
    """A two-stage (Mask R-CNN, mmdet's PVT-T) and a one-stage (RetinaNet R18) detector, both small."""
    two_stage = write_small_config(str(tmp_path), 'two_stage', osp.join(REPO_ROOT, MASK_RCNN), dict(
        test_cfg=dict(rpn=dict(nms_pre=100, max_per_img=20), rcnn=dict(max_per_img=5))))
    one_stage = write_small_config(str(tmp_path), 'one_stage', 'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py', dict(
        bbox_head=dict(num_classes=6), test_cfg=dict(nms_pre=100, max_per_img=5)))
    return two_stage, one_stage

def test_interleaved_order_untimed_preprocessing_and_breakdown(small_configs, mini_coco):
    """Only model parts advance the fake clock inside the timed region; the pipeline and the
    data_preprocessor advance it by much more, outside. So every measured time is exact."""
    clock = FakeClock()
    models = load_models(small_configs, device='cpu', log=None)
    part_seconds = [dict(backbone=0.010, neck=0.002, rpn_head=0.001, roi_head=0.005),   # two-stage
                    dict(backbone=0.004, neck=0.001, bbox_head=0.003)]                   # one-stage
    for bench_model, parts in zip(models, part_seconds):
        bench_model.pipeline.transforms.insert(0, lambda results: clock.advance(100.0) or results)  # "slow" loading
        advance_on_call(bench_model.model.data_preprocessor, 'forward', clock, 50.0)
        for part, seconds in parts.items():
            advance_on_call(getattr(bench_model.model, part), 'forward' if part in ('backbone', 'neck') else 'predict',
                            clock, seconds)
    images = select_images(list_mini_coco_val(mini_coco), 2, 'mini')
    result = benchmark_detectors(models, images, warmup=1, breakdown='extra-pass', clock=clock, progress=False)

    # The timed order rotates per image (A B, then B A); the breakdown pass keeps A B. The memory
    # pass (its malloc_trim would make the next timed forwards fault pages in) comes after them all.
    per_image = [[('timed', 0), ('timed', 1), ('breakdown', 0), ('breakdown', 1)],
                 [('timed', 1), ('timed', 0), ('breakdown', 0), ('breakdown', 1)]]
    assert result.events == [('warmup', 0, 0), ('warmup', 1, 0)] + [
        (kind, model, k) for k in range(2) for kind, model in per_image[k]] + [
        ('memory', model, k) for k in range(2) for model in range(2)]
    assert 'rotates by one model per image' in result.schedule
    assert result.schedule.endswith('; then, after the last timed image, per image: memory A B')
    for timings, parts in zip(result.timings, part_seconds):
        expected_ms = sum(parts.values()) * 1e3
        assert timings.total_ms == pytest.approx([expected_ms] * 2, abs=1e-6)
        assert set(timings.breakdown_ms) == set(parts) | {'other'}
        for part, seconds in parts.items():
            assert timings.breakdown_ms[part] == pytest.approx([seconds * 1e3] * 2, abs=1e-6)
        assert timings.breakdown_ms['other'] == pytest.approx([0.0, 0.0], abs=1e-6)
        assert len(timings.memory_mib) == 2 and all(m >= 0 for m in timings.memory_mib)
        assert all(d is not None and d >= 0 for d in timings.detections)
        # Page faults are counted around each timed forward, on the CPU.
        assert len(timings.page_faults) == 2 and all(isinstance(f, int) and f >= 0 for f in timings.page_faults)

    summary = summarize_result(result, machine={})
    one_stage = summary['models'][1]
    assert one_stage['ratio_to_first']['mean'] == pytest.approx(8 / 18)
    assert one_stage['ratio_to_first']['median'] == pytest.approx(8 / 18)
    assert one_stage['breakdown_ms']['bbox_head'] == pytest.approx(3.0, abs=1e-6)
    assert one_stage['page_faults_per_image'] == float(np.median(result.timings[1].page_faults))
    for bench_model in models:   # the timers put back the methods they wrapped
        assert 'slow' == bench_model.model.backbone.forward.__name__

def test_latency_only_runs_no_memory_pass_and_says_so(small_configs, mini_coco):
    """memory=False: no probe and no memory pass; the schedule and the report say memory was
    not measured instead of showing a number."""
    models = load_models(small_configs, device='cpu', log=None)
    images = select_images(list_mini_coco_val(mini_coco), 2, 'mini')
    result = benchmark_detectors(models, images, warmup=0, breakdown='off', progress=False, memory=False)
    assert [kind for kind, _, _ in result.events] == ['timed'] * 4
    assert 'memory' not in result.schedule and result.memory_method == 'not measured'
    assert all(t.memory_mib == [] and len(t.total_ms) == 2 for t in result.timings)
    summary = summarize_result(result, machine_facts('cpu', 'test'))
    assert all(m['memory']['peak_forward_mib'] is None for m in summary['models'])
    table = render_markdown(summary)
    assert '- Memory: not measured' in table
