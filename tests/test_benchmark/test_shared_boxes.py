"""Feeding one detector's boxes to another's heads (slab_mmdet.benchmark.shared_boxes): the fed
detector still computes its own predictions, returns the reference's boxes, is restored after,
and the benchmark loop records the reference once per image, untimed."""
import os.path as osp

import pytest
import torch

from slab_mmdet.benchmark import BenchmarkError, benchmark_detectors, load_models, select_images
from slab_mmdet.benchmark.images import list_mini_coco_val
from slab_mmdet.benchmark.shared_boxes import SharedBoxes
from testing_utils import REPO_ROOT
from testing_utils.benchmark_utils import MASK_RCNN, write_small_config

SMALL_HEADS = dict(test_cfg=dict(rpn=dict(nms_pre=100, max_per_img=20), rcnn=dict(score_thr=0.0, max_per_img=5)))


@pytest.fixture
def two_detectors(tmp_path):
    """Two small Mask R-CNNs of one config with different random weights (they find different boxes)."""
    path = write_small_config(str(tmp_path), 'two_stage', osp.join(REPO_ROOT, MASK_RCNN), SMALL_HEADS)
    torch.manual_seed(0)
    first = load_models([path], device='cpu', log=None)[0]
    torch.manual_seed(1)
    second = load_models([path], device='cpu', log=None)[0]
    second.name = 'second'
    return first, second


def predict(bench_model, path):
    with torch.inference_mode():
        return bench_model.model(**bench_model.prepare(path), mode='predict')[0].pred_instances


def test_fed_detector_computes_its_own_and_returns_the_references_boxes(two_detectors, mini_coco):
    first, second = two_detectors
    path = list_mini_coco_val(mini_coco)[0]
    own = predict(second, path)
    reference = predict(first, path)
    assert not torch.equal(own.bboxes, reference.bboxes)   # otherwise the test shows nothing

    boxes = SharedBoxes([first, second])
    with torch.inference_mode():
        boxes.record(first, first.prepare(path), 0)
    calls = []
    original = second.model.roi_head.predict_bbox
    second.model.roi_head.predict_bbox = lambda *a, **k: calls.append(1) or original(*a, **k)
    with boxes.feeding(second, 0):
        fed = predict(second, path)
    del second.model.roi_head.predict_bbox
    assert calls == [1]                                       # its own RoI prediction still ran
    assert torch.equal(fed.bboxes, reference.bboxes) and torch.equal(fed.labels, reference.labels)
    assert not torch.equal(fed.masks, reference.masks)        # masks from its own features
    # Restored: the instance has no replaced method left, and predicts its own boxes again.
    assert 'predict' not in second.model.rpn_head.__dict__ and 'predict_bbox' not in second.model.roi_head.__dict__
    assert torch.equal(predict(second, path).bboxes, own.bboxes)


def test_boxes_of_another_input_size_or_image_are_refused(two_detectors, mini_coco):
    first, second = two_detectors
    paths = list_mini_coco_val(mini_coco)
    boxes = SharedBoxes([first, second])
    with torch.inference_mode():
        boxes.record(first, first.prepare(paths[0]), 0)
    with pytest.raises(BenchmarkError, match='no boxes of .* recorded for image 3'):
        with boxes.feeding(second, 3):
            pass
    second.pipeline.transforms[1].scale = (96, 64)
    with pytest.raises(BenchmarkError, match=r"second sees image 0 at \(\d+, \d+\), .* at \(\d+, \d+\)"):
        with boxes.feeding(second, 0):
            predict(second, paths[0])


def test_one_stage_detector_is_refused_by_name(tmp_path):
    one_stage = write_small_config(str(tmp_path), 'one_stage', 'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py',
                                   dict(bbox_head=dict(num_classes=6)))
    model = load_models([one_stage], device='cpu', log=None)[0]
    with pytest.raises(BenchmarkError, match='a RetinaNet has no rpn_head.predict; .* two-stage'):
        SharedBoxes([model])


def test_benchmark_records_the_reference_untimed_and_every_model_keeps_its_boxes(two_detectors, mini_coco):
    first, second = two_detectors
    images = select_images(list_mini_coco_val(mini_coco), 2, 'mini')
    result = benchmark_detectors([first, second], images, warmup=1, progress=False, memory=False,
                                 shared_boxes=True)
    assert result.events[:3] == [('reference', 0, 0), ('reference', 0, 1), ('warmup', 0, 0)]
    assert "A's boxes recorded in an untimed pass" in result.schedule
    assert [t.detections for t in result.timings] == [[5, 5], [5, 5]]
