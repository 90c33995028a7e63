"""A whole Mask R-CNN / Faster R-CNN as one traceable module, from the preprocessed image to
its final detections, in standard ONNX operators only (RoiAlign, NonMaxSuppression, TopK, ...),
and the metadata its exported graph carries.

:class:`DetectorGraph` runs the detector's own modules (backbone, neck, RPN head, RoI heads)
and, between them, the export-friendly steps of :mod:`.export_ops` with the detector's
test_cfg (score threshold, NMS IoUs, proposal and detection counts). Its outputs are the
detections in the coordinates of the preprocessed image; :mod:`.onnx_export` writes it,
:mod:`.onnx_detector` maps its outputs back to the original image and pastes the masks.
"""
import json

import torch
import torch.nn as nn

from ..version import __version__
from .export_ops import decode_deltas, grid_anchors, multiclass_detections, multilevel_roi_align, rpn_proposals

DETECTOR_INPUTS = ('images', 'image_shape')
DETECTOR_OUTPUTS = ('boxes', 'scores', 'labels', 'masks')
WH_RATIO_CLIP = 16 / 1000   # DeltaXYWHBBoxCoder.decode's default, which mmdet's heads use


class UnsupportedDetector(ValueError):
    """A detector whose parts DetectorGraph does not reproduce; the message names the part."""


def _require(condition, what):
    if not condition:
        raise UnsupportedDetector(
            f'detector export: {what}. Supported: two-stage detectors with RPNHead (sigmoid objectness, '
            f'AnchorGenerator, DeltaXYWHBBoxCoder), StandardRoIHead with SingleRoIExtractor(RoIAlign), a BBoxHead '
            f'with DeltaXYWHBBoxCoder and softmax scores, and optionally FCNMaskHead (Faster / Mask R-CNN); NMS of '
            f"type 'nms'.")


def _coder_cfg(coder, what):
    from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder
    _require(type(coder) is DeltaXYWHBBoxCoder, f'{what} uses {type(coder).__name__}')
    return dict(means=tuple(coder.means), stds=tuple(coder.stds), clip_border=coder.clip_border,
                add_ctr_clamp=coder.add_ctr_clamp, ctr_clamp=coder.ctr_clamp, wh_ratio_clip=WH_RATIO_CLIP)


def _extractor_cfg(extractor, what):
    from mmcv.ops import RoIAlign
    from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
    _require(type(extractor) is SingleRoIExtractor, f'{what} is a {type(extractor).__name__}')
    layer = extractor.roi_layers[0]
    _require(isinstance(layer, RoIAlign) and layer.pool_mode == 'avg', f'{what} pools with {type(layer).__name__}')
    return dict(strides=tuple(extractor.featmap_strides), output_size=tuple(layer.output_size),
                sampling_ratio=int(layer.sampling_ratio), aligned=bool(layer.aligned),
                finest_scale=extractor.finest_scale)


def _nms_iou(cfg, what):
    nms = cfg.get('nms', {})
    _require(nms.get('type', 'nms') == 'nms', f"{what} uses NMS type {nms.get('type')!r}")
    return float(nms['iou_threshold'])


class DetectorGraph(nn.Module):
    """A two-stage mmdet detector (Faster / Mask R-CNN) from preprocessed image to detections.

    ``forward(images, image_shape)``: ``images`` (1, 3, H, W) as mmdet's data preprocessor
    gives it (normalised, padded), ``image_shape`` (2,) int64, the (h, w) of the image
    before padding (boxes are clipped to it, as mmdet clips to ``img_shape``). Returns
    ``boxes`` (D, 4) x1 y1 x2 y2 in the input's pixels (divide by the preprocessing's
    scale factor for the original image), ``scores`` (D,), ``labels`` (D,) int64 and, with
    a mask head, ``masks`` (D, 28, 28) mask probabilities (the label's channel, sigmoid),
    the detections sorted by score, at most ``max_per_img``.

    Raises:
        UnsupportedDetector: a part the graph does not reproduce (named).
    """

    def __init__(self, detector):
        super().__init__()
        from mmdet.models.dense_heads import RPNHead
        from mmdet.models.roi_heads import StandardRoIHead
        from mmdet.models.roi_heads.bbox_heads import BBoxHead
        from mmdet.models.roi_heads.mask_heads import FCNMaskHead
        from mmdet.models.task_modules.prior_generators import AnchorGenerator

        rpn, roi = getattr(detector, 'rpn_head', None), getattr(detector, 'roi_head', None)
        _require(rpn is not None and roi is not None, f'{type(detector).__name__} is not a two-stage detector')
        _require(type(rpn) is RPNHead and rpn.use_sigmoid_cls, f'the RPN head is a {type(rpn).__name__}')
        _require(type(rpn.prior_generator) is AnchorGenerator and rpn.prior_generator.center_offset == 0,
                 f'the RPN priors come from {type(rpn.prior_generator).__name__}')
        _require(type(roi) is StandardRoIHead, f'the RoI head is a {type(roi).__name__}')
        _require(isinstance(roi.bbox_head, BBoxHead) and not roi.bbox_head.custom_cls_channels,
                 f'the box head is a {type(roi.bbox_head).__name__}')
        _require(not roi.with_mask or type(roi.mask_head) is FCNMaskHead,
                 f'the mask head is a {type(getattr(roi, "mask_head", None)).__name__}')
        self.detector = detector
        rpn_cfg, rcnn_cfg = rpn.test_cfg, roi.test_cfg
        self.rpn_cfg = dict(nms_pre=int(rpn_cfg.get('nms_pre', -1)), iou_threshold=_nms_iou(rpn_cfg, 'the RPN'),
                            max_per_img=int(rpn_cfg['max_per_img']),
                            min_bbox_size=float(rpn_cfg.get('min_bbox_size', -1)),
                            **_coder_cfg(rpn.bbox_coder, 'the RPN'))
        self.anchor_strides = [tuple(s) for s in rpn.prior_generator.strides]
        for i, base in enumerate(rpn.prior_generator.base_anchors):
            self.register_buffer(f'base_anchors{i}', base.clone().float(), persistent=False)
        self.rcnn_cfg = dict(score_thr=float(rcnn_cfg.score_thr), iou_threshold=_nms_iou(rcnn_cfg, 'the RoI head'),
                             max_per_img=int(rcnn_cfg.max_per_img))
        self.box_coder = _coder_cfg(roi.bbox_head.bbox_coder, 'the box head')
        self.box_extractor = _extractor_cfg(roi.bbox_roi_extractor, 'the box RoI extractor')
        self.num_classes = roi.bbox_head.num_classes
        self.class_agnostic_boxes = roi.bbox_head.reg_class_agnostic
        self.with_mask = roi.with_mask
        if self.with_mask:
            self.mask_extractor = _extractor_cfg(roi.mask_roi_extractor, 'the mask RoI extractor')
            self.mask_thr_binary = float(rcnn_cfg.get('mask_thr_binary', 0.5))
            self.class_agnostic_masks = roi.mask_head.class_agnostic

    @property
    def output_names(self):
        return list(DETECTOR_OUTPUTS if self.with_mask else DETECTOR_OUTPUTS[:3])

    def forward(self, images, image_shape):
        det = self.detector
        feats = det.extract_feat(images)
        cls_scores, bbox_preds = det.rpn_head(feats)
        anchors = [grid_anchors(getattr(self, f'base_anchors{i}'), stride, cls)
                   for i, (stride, cls) in enumerate(zip(self.anchor_strides, cls_scores))]
        proposals, _ = rpn_proposals(cls_scores, bbox_preds, anchors, image_shape, **self.rpn_cfg)

        box_feats = feats[:len(self.box_extractor['strides'])]
        cls_score, bbox_pred = det.roi_head.bbox_head(multilevel_roi_align(box_feats, proposals, **self.box_extractor))
        scores = cls_score.softmax(-1)[:, :-1]
        num_classes = 1 if self.class_agnostic_boxes else self.num_classes
        priors = proposals[:, None, :].expand(-1, num_classes, 4).reshape(-1, 4)
        boxes = decode_deltas(priors, bbox_pred.reshape(-1, 4), image_hw=image_shape, **self.box_coder)
        boxes = boxes.reshape(-1, num_classes, 4).expand(-1, self.num_classes, 4)
        det_boxes, det_scores, det_labels = multiclass_detections(boxes, scores, **self.rcnn_cfg)
        if not self.with_mask:
            return det_boxes, det_scores, det_labels
        mask_feats = feats[:len(self.mask_extractor['strides'])]
        logits = det.roi_head.mask_head(multilevel_roi_align(mask_feats, det_boxes, **self.mask_extractor))
        channel = torch.zeros_like(det_labels) if self.class_agnostic_masks else det_labels
        index = channel.view(-1, 1, 1, 1).expand(-1, 1, logits.shape[2], logits.shape[3])
        return det_boxes, det_scores, det_labels, logits.gather(1, index)[:, 0].sigmoid()


def graph_metadata(detector, graph, min_input_size):
    """What a user of the exported graph needs to know, stored in the ONNX file's metadata."""
    classes = (getattr(detector, 'dataset_meta', None) or {}).get('classes')
    return {
        'slab_mmdet.kind': 'detector',
        'slab_mmdet.version': __version__,
        'slab_mmdet.inputs': json.dumps(list(DETECTOR_INPUTS)),
        'slab_mmdet.outputs': json.dumps(graph.output_names),
        'slab_mmdet.classes': json.dumps(list(classes) if classes else None),
        'slab_mmdet.min_input_size': str(min_input_size),
        'slab_mmdet.mask_thr_binary': str(getattr(graph, 'mask_thr_binary', 0.5)),
        'slab_mmdet.test_cfg': json.dumps(dict(rpn=graph.rpn_cfg, rcnn=graph.rcnn_cfg)),
    }


__all__ = ['DETECTOR_INPUTS', 'DETECTOR_OUTPUTS', 'DetectorGraph', 'UnsupportedDetector', 'graph_metadata']
