"""The whole stack on CPU: Mask R-CNN with mmdet's PVT-T trains, saves, reloads, infers
and is evaluated with CocoMetric on mini COCO (configs/mini/mask_rcnn_pvt_t.py)."""
import math
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from mmengine.runner import Runner

from slab_mmdet.datasets import MINI_COCO_CLASSES
from testing_utils.helpers import light_two_stage, mini_config

CONFIG = 'configs/mini/mask_rcnn_pvt_t.py'
MAX_ITERS = 2

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def trained(mini_coco, tmp_path_factory):
    """(runner, its config, validation metrics) after MAX_ITERS training iterations."""
    work_dir = tmp_path_factory.mktemp('pvt_t')
    cfg = light_two_stage(mini_config(CONFIG, mini_coco, work_dir, max_iters=MAX_ITERS, val=False))
    cfg.randomness = dict(seed=0)
    runner = Runner.from_cfg(cfg)
    runner.train()
    metrics = runner.val()
    return runner, cfg, metrics


def test_train_then_evaluate_gives_coco_metrics(trained):
    runner, cfg, metrics = trained
    assert runner.iter == MAX_ITERS
    assert osp.isfile(osp.join(cfg.work_dir, f'iter_{MAX_ITERS}.pth'))
    assert type(runner.model.backbone).__name__ == 'PyramidVisionTransformer'
    for key in ('coco/bbox_mAP', 'coco/segm_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP_50'):
        assert math.isfinite(metrics[key]) and 0.0 <= metrics[key] <= 1.0, (key, metrics[key])


def test_coco_metric_scores_ground_truth_as_perfect(mini_coco):
    """The evaluation wiring itself: the val annotations, given as predictions, score mAP 1."""
    from mmdet.evaluation import CocoMetric
    from pycocotools.coco import COCO
    ann_file = osp.join(mini_coco, 'annotations', 'instances_val.json')
    coco = COCO(ann_file)
    metric = CocoMetric(ann_file=ann_file, metric=['bbox', 'segm'])
    metric.dataset_meta = dict(classes=MINI_COCO_CLASSES)
    samples = []
    for img in coco.dataset['images']:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img['id']))
        samples.append(dict(
            img_id=img['id'], ori_shape=(img['height'], img['width']),
            pred_instances=dict(
                bboxes=torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a['bbox'] for a in anns)]),
                scores=torch.ones(len(anns)),
                labels=torch.tensor([a['category_id'] - 1 for a in anns]),
                masks=torch.from_numpy(np.stack([coco.annToMask(a) for a in anns]).astype(bool)))))
    metric.process({}, samples)
    metrics = metric.evaluate(len(samples))
    assert metrics['coco/bbox_mAP'] == pytest.approx(1.0)
    assert metrics['coco/segm_mAP'] == pytest.approx(1.0)


def test_init_detector_loads_the_checkpoint_and_infers(trained, mini_coco):
    from mmdet.apis import inference_detector, init_detector
    from mmdet.structures import DetDataSample
    runner, cfg, _ = trained
    ckpt = osp.join(cfg.work_dir, f'iter_{MAX_ITERS}.pth')
    model = init_detector(cfg, ckpt, device='cpu')    # torch.load(weights_only=True) underneath
    assert model.dataset_meta['classes'] == MINI_COCO_CLASSES
    trained_state = runner.model.state_dict()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, trained_state[name], msg=f'{name} was not loaded')

    img_path = osp.join(mini_coco, 'val', '000000000001.jpg')
    h, w = cv2.imread(img_path).shape[:2]
    result = inference_detector(model, img_path)
    assert isinstance(result, DetDataSample)
    assert tuple(result.ori_shape) == (h, w)
    pred = result.pred_instances
    n = len(pred)
    assert 0 < n <= cfg.model.test_cfg.rcnn.max_per_img
    assert pred.bboxes.shape == (n, 4) and pred.scores.shape == (n,) and pred.labels.shape == (n,)
    assert pred.masks.shape == (n, h, w) and pred.masks.dtype == torch.bool
    assert ((pred.scores >= cfg.model.test_cfg.rcnn.score_thr) & (pred.scores <= 1)).all()
    assert (pred.scores[:-1] >= pred.scores[1:]).all()      # best first
    assert ((pred.labels >= 0) & (pred.labels < len(MINI_COCO_CLASSES))).all()
    boxes = pred.bboxes
    assert (boxes[:, 2:] >= boxes[:, :2]).all()
    assert (boxes[:, [0, 2]] >= -1).all() and (boxes[:, [0, 2]] <= w + 1).all()
    assert (boxes[:, [1, 3]] >= -1).all() and (boxes[:, [1, 3]] <= h + 1).all()

    # The same weights and pipeline give the same detections as the trained runner's model.
    runner.model.cfg = model.cfg
    again = inference_detector(runner.model, img_path).pred_instances
    torch.testing.assert_close(again.bboxes, boxes)
    torch.testing.assert_close(again.scores, pred.scores)
