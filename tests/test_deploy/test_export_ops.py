"""The export-friendly detection steps (slab_mmdet.deploy.export_ops) and the whole
DetectorGraph compute what mmdet's own code computes, on the same inputs."""
import copy

import pytest
import torch
from mmcv.ops import batched_nms as mmcv_batched_nms
from mmdet.models.layers import multiclass_nms
from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask
from mmengine.structures import InstanceData

from slab_mmdet.deploy.detector_graph import DetectorGraph, UnsupportedDetector
from slab_mmdet.deploy.export_ops import (batched_nms, decode_deltas, grid_anchors, multiclass_detections,
                                          multilevel_roi_align, roi_levels, rpn_proposals)
from slab_mmdet.deploy.onnx_detector import paste_masks
from testing_utils.helpers import annealed_mask_rcnn

pytestmark = pytest.mark.usefixtures('quiet_mmengine_logger', 'one_torch_thread')
CONFIG = 'configs/mini/mask_rcnn_slab_pvt_t.py'


@pytest.fixture(scope='module')
def detector():
    return annealed_mask_rcnn(CONFIG)


def random_boxes(n, size=(190, 250), seed=0, min_side=1.0):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([size[1], size[0]])
    wh = torch.rand(n, 2, generator=gen) * torch.tensor([size[1], size[0]]) / 2 + min_side
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize('hw', [(48, 80), (7, 13), (1, 1)])
def test_anchors_are_mmdets_on_every_level(detector, hw):
    generator = detector.rpn_head.prior_generator
    sizes = [(max(1, hw[0] // 2 ** i), max(1, hw[1] // 2 ** i)) for i in range(generator.num_levels)]
    want = generator.grid_priors(sizes, device='cpu')
    for level, (size, stride) in enumerate(zip(sizes, generator.strides)):
        got = grid_anchors(generator.base_anchors[level], stride, torch.zeros(1, 1, *size))
        torch.testing.assert_close(got, want[level], rtol=0, atol=0)


@pytest.mark.parametrize('coder_cfg', [
    dict(target_means=[0.0] * 4, target_stds=[1.0] * 4),
    dict(target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]),
    dict(target_means=[0.1, -0.1, 0.0, 0.05], target_stds=[0.1, 0.1, 0.2, 0.2], add_ctr_clamp=True, ctr_clamp=8),
    dict(target_means=[0.0] * 4, target_stds=[1.0] * 4, clip_border=False),
])
def test_box_decoding_is_mmdets(coder_cfg):
    from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder
    coder = DeltaXYWHBBoxCoder(**coder_cfg)
    priors = random_boxes(300)
    deltas = torch.randn(300, 4, generator=torch.Generator().manual_seed(1)) * 2   # some beyond the ratio clip
    want = coder.decode(priors, deltas, max_shape=(190, 250))
    got = decode_deltas(priors, deltas, coder.means, coder.stds, (190, 250), clip_border=coder.clip_border,
                        add_ctr_clamp=coder.add_ctr_clamp, ctr_clamp=coder.ctr_clamp)
    torch.testing.assert_close(got, want)


def test_nms_per_group_is_mmcvs():
    boxes = random_boxes(400, min_side=20.0)
    scores = torch.rand(400, generator=torch.Generator().manual_seed(2))
    groups = torch.randint(0, 5, (400,), generator=torch.Generator().manual_seed(3))
    _, want = mmcv_batched_nms(boxes, scores, groups, dict(type='nms', iou_threshold=0.5))
    assert batched_nms(boxes, scores, groups, 0.5).tolist() == want.tolist()


def test_rpn_proposals_are_mmdets(detector):
    head = detector.rpn_head
    feats = [torch.randn(1, 128, 48 // 2 ** i + 1, 80 // 2 ** i + 1, generator=torch.Generator().manual_seed(i))
             for i in range(5)]
    with torch.no_grad():
        cls_scores, bbox_preds = head(feats)
    meta = dict(img_shape=(190, 316), scale_factor=(1.0, 1.0))
    cfg = copy.deepcopy(head.test_cfg)
    cfg.nms_pre = 300   # fewer than the largest level's anchors: the top-k is exercised
    want = head.predict_by_feat(cls_scores, bbox_preds, batch_img_metas=[meta], cfg=cfg, rescale=False)[0]
    anchors = [grid_anchors(base, stride, c) for base, stride, c in
               zip(head.prior_generator.base_anchors, head.prior_generator.strides, cls_scores)]
    coder = head.bbox_coder
    boxes, scores = rpn_proposals(cls_scores, bbox_preds, anchors, (190, 316), cfg.nms_pre, cfg.nms.iou_threshold,
                                  cfg.max_per_img, cfg.get('min_bbox_size', -1), coder.means, coder.stds)
    assert len(boxes) == len(want.bboxes) > 100
    torch.testing.assert_close(boxes, want.bboxes)
    torch.testing.assert_close(scores, want.scores)


def test_multilevel_roi_align_is_the_roi_extractors(detector):
    extractor = detector.roi_head.bbox_roi_extractor
    feats = [torch.randn(1, 128, 64 // 2 ** i, 96 // 2 ** i, generator=torch.Generator().manual_seed(i))
             for i in range(4)]
    boxes = torch.cat([random_boxes(60, (256, 384), seed=4, min_side=2.0),    # levels 0-1
                       random_boxes(20, (256, 384), seed=5, min_side=230.0),  # level 2
                       random_boxes(10, (256, 384), seed=6, min_side=460.0)])  # level 3
    rois = torch.cat([torch.zeros(len(boxes), 1), boxes], dim=1)
    assert set(roi_levels(boxes, 4).tolist()) == {0, 1, 2, 3}
    assert roi_levels(boxes, 4).tolist() == extractor.map_roi_levels(rois, 4).tolist()
    layer = extractor.roi_layers[0]
    got = multilevel_roi_align(feats, boxes, extractor.featmap_strides, tuple(layer.output_size),
                               layer.sampling_ratio, layer.aligned, extractor.finest_scale)
    with torch.no_grad():
        torch.testing.assert_close(got, extractor(feats, rois), rtol=1e-5, atol=1e-5)


def test_multiclass_detections_are_mmdets_multiclass_nms():
    gen = torch.Generator().manual_seed(6)
    boxes = random_boxes(200 * 6, min_side=10.0).view(200, 6, 4)
    scores = torch.softmax(torch.randn(200, 7, generator=gen) * 3, dim=-1)
    dets, labels = multiclass_nms(boxes.view(200, -1), scores, 0.05, dict(type='nms', iou_threshold=0.5), 100)
    got_boxes, got_scores, got_labels = multiclass_detections(boxes, scores[:, :-1], 0.05, 0.5, 100)
    assert len(got_boxes) == len(dets) == 100
    torch.testing.assert_close(got_boxes, dets[:, :4])
    torch.testing.assert_close(got_scores, dets[:, 4])
    assert got_labels.tolist() == labels.tolist()


def test_pasted_masks_are_mmdets():
    gen = torch.Generator().manual_seed(7)
    probs = torch.rand(12, 28, 28, generator=gen)
    boxes = torch.cat([random_boxes(11, (120, 160), seed=8), torch.tensor([[30.0, 40.0, 30.0, 60.0]])])  # one empty
    want = torch.zeros(12, 120, 160, dtype=torch.bool)
    for i in range(12):
        chunk, where = _do_paste_mask(probs[i:i + 1, None], boxes[i:i + 1], 120, 160, skip_empty=True)
        want[(slice(i, i + 1),) + where] = chunk >= 0.5
    assert torch.equal(paste_masks(probs, boxes, 120, 160, 0.5), want)


@pytest.mark.parametrize('config', [CONFIG, 'configs/mini/mask_rcnn_slab_swin_t.py'])
def test_the_graph_gives_mmdets_detections(config, mini_coco):
    from slab_mmdet import apis
    model = annealed_mask_rcnn(config)
    model.cfg = apis.load_config(config, {'test_dataloader.dataset.data_root': mini_coco + '/',
                                          'model.test_cfg.rcnn.score_thr': 0.0})
    model.roi_head.test_cfg.score_thr = 0.0   # random weights: keep 100 detections anyway
    data = apis.detector_inputs(model, apis.inference_pipeline(model.cfg), apis.first_test_image(model.cfg))
    with torch.no_grad():
        want = model.predict(data['inputs'], data['data_samples'], rescale=False)[0].pred_instances
        graph = DetectorGraph(model).eval()
        boxes, scores, labels, masks = graph(data['inputs'], torch.tensor(data['data_samples'][0].img_shape))
    assert len(boxes) == len(want) == 100
    torch.testing.assert_close(boxes, want.bboxes)
    torch.testing.assert_close(scores, want.scores)
    assert labels.tolist() == want.labels.tolist()
    h, w = data['data_samples'][0].img_shape
    assert torch.equal(paste_masks(masks, boxes, h, w), want.masks)   # rescale=False: pasted at input size


def test_a_detector_the_graph_cannot_reproduce_is_refused_naming_the_part(detector):
    other = copy.deepcopy(detector)
    other.roi_head.test_cfg.nms = dict(type='soft_nms', iou_threshold=0.5)
    with pytest.raises(UnsupportedDetector, match=r"the RoI head uses NMS type 'soft_nms'. Supported: two-stage"):
        DetectorGraph(other)
    with pytest.raises(UnsupportedDetector, match=r'InstanceData is not a two-stage detector'):
        DetectorGraph(InstanceData())
