"""The steps a two-stage mmdet detector runs in Python at inference, written so that they trace
into standard ONNX operators with dynamic input sizes: anchors on a feature map, delta box
decoding, top-k with a data-dependent k, NMS per level or class, and multi-level RoIAlign.

Each function computes what mmdet's own code computes (AnchorGenerator.grid_priors,
DeltaXYWHBBoxCoder.decode, RPNHead.predict_by_feat, SingleRoIExtractor, multiclass_nms);
tests/test_deploy/test_export_ops.py compares them on the same inputs. The shapes are
read with ``torch._shape_as_tensor`` where a size decides a count, so that a traced graph
keeps them symbolic instead of the example input's numbers.
"""
import math

import torch
import torchvision

from ..utils import exporting_graph


def topk_count(x, k, dim=0):
    """``min(k, x.shape[dim])``, symbolic under tracing (an input to ONNX TopK)."""
    if exporting_graph():
        size = torch._shape_as_tensor(x)[dim].unsqueeze(0)
        return torch.min(torch.cat([torch.tensor([k], dtype=size.dtype), size]))
    return min(k, x.shape[dim])


def grid_anchors(base_anchors, stride, feat):
    """The anchors of one level, as mmdet's AnchorGenerator lays them out: for each position
    (row-major over the feature map ``feat`` (1, C, H, W)), each base anchor shifted there.

    Args:
        base_anchors (Tensor): (A, 4) anchors at the origin (``AnchorGenerator.base_anchors[i]``).
        stride (tuple[int, int]): (stride_w, stride_h) of the level.
        feat (Tensor): the level's feature map; only its size is read.

    Returns:
        Tensor: (H * W * A, 4) anchors (x1, y1, x2, y2).
    """
    size = torch._shape_as_tensor(feat) if exporting_graph() else feat.shape
    h, w = size[-2], size[-1]
    shift_x = torch.arange(0, w, dtype=torch.float32, device=feat.device) * stride[0]
    shift_y = torch.arange(0, h, dtype=torch.float32, device=feat.device) * stride[1]
    yy, xx = torch.meshgrid(shift_y, shift_x, indexing='ij')
    shifts = torch.stack([xx.reshape(-1), yy.reshape(-1), xx.reshape(-1), yy.reshape(-1)], dim=-1)
    return (shifts[:, None, :] + base_anchors.to(shifts)[None, :, :]).reshape(-1, 4)


def clip_boxes(boxes, image_hw):
    """Boxes (..., 4) clamped to ``[0, w] x [0, h]`` for ``image_hw`` = (h, w) (a tensor or ints)."""
    if isinstance(image_hw, torch.Tensor):
        hw = image_hw.to(device=boxes.device, dtype=boxes.dtype)   # traced: the graph's image_shape input
    else:
        hw = torch.tensor(image_hw, dtype=boxes.dtype, device=boxes.device)
    upper = torch.stack([hw[1], hw[0], hw[1], hw[0]])
    return torch.max(torch.min(boxes, upper), torch.zeros_like(upper))


def decode_deltas(priors, deltas, means, stds, image_hw=None, wh_ratio_clip=16 / 1000, clip_border=True,
                  add_ctr_clamp=False, ctr_clamp=32):
    """mmdet's DeltaXYWHBBoxCoder.decode for (N, 4) priors and (N, 4) deltas: centre offsets
    scaled by the prior's size, log size ratios clamped to ``|log(wh_ratio_clip)|``, the
    result clipped to the image (``image_hw`` = (h, w)) when ``clip_border``."""
    means = deltas.new_tensor(means).view(1, 4)
    stds = deltas.new_tensor(stds).view(1, 4)
    d = deltas * stds + means
    pxy = (priors[:, :2] + priors[:, 2:]) * 0.5
    pwh = priors[:, 2:] - priors[:, :2]
    dxy_wh = pwh * d[:, :2]
    max_ratio = abs(math.log(wh_ratio_clip))
    if add_ctr_clamp:
        dxy_wh = dxy_wh.clamp(min=-ctr_clamp, max=ctr_clamp)
        dwh = d[:, 2:].clamp(max=max_ratio)
    else:
        dwh = d[:, 2:].clamp(min=-max_ratio, max=max_ratio)
    gxy = pxy + dxy_wh
    gwh = pwh * dwh.exp()
    boxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
    if clip_border and image_hw is not None:
        boxes = clip_boxes(boxes, image_hw)
    return boxes


def batched_nms(boxes, scores, groups, iou_threshold):
    """NMS within each group (level or class), as mmcv's batched_nms: boxes are offset by
    ``group * (max coordinate + 1)`` so that one NMS cannot suppress across groups.
    Returns the kept indices, highest score first (ONNX NonMaxSuppression when traced)."""
    # The largest coordinate, 0 for no box (a zero appended: max() of nothing is an error).
    largest = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    offsets = groups.to(boxes) * (largest + 1)
    return torchvision.ops.nms(boxes + offsets[:, None], scores, float(iou_threshold))


def rpn_proposals(cls_scores, bbox_preds, anchors, image_hw, nms_pre, iou_threshold, max_per_img,
                  min_bbox_size, means, stds, **decode_cfg):
    """The RPN's proposals of one image, as RPNHead.predict_by_feat (sigmoid objectness):
    the ``nms_pre`` best anchors of each level, decoded, boxes not wider and higher than
    ``min_bbox_size`` dropped, NMS per level, the ``max_per_img`` best kept.

    Args:
        cls_scores, bbox_preds (list[Tensor]): per level (1, A, H, W) and (1, 4A, H, W).
        anchors (list[Tensor]): per level (H * W * A, 4), from :func:`grid_anchors`.
        image_hw: (h, w) of the image before padding (boxes are clipped to it).

    Returns:
        tuple[Tensor, Tensor]: boxes (P, 4) and scores (P,), highest score first.
    """
    boxes, scores, levels = [], [], []
    for level, (cls, reg, level_anchors) in enumerate(zip(cls_scores, bbox_preds, anchors)):
        score = cls[0].permute(1, 2, 0).reshape(-1).sigmoid()
        delta = reg[0].permute(1, 2, 0).reshape(-1, 4)
        if nms_pre > 0:
            score, index = score.topk(topk_count(score, nms_pre))
            delta, level_anchors = delta[index], level_anchors[index]
        boxes.append(decode_deltas(level_anchors, delta, means, stds, image_hw, **decode_cfg))
        scores.append(score)
        levels.append(torch.full_like(score, level, dtype=torch.int64))
    boxes, scores, levels = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
    if min_bbox_size >= 0:
        wh = boxes[:, 2:] - boxes[:, :2]
        valid = torch.where((wh[:, 0] > min_bbox_size) & (wh[:, 1] > min_bbox_size))[0]
        boxes, scores, levels = boxes[valid], scores[valid], levels[valid]
    keep = batched_nms(boxes, scores, levels, iou_threshold)[:max_per_img]
    return boxes[keep], scores[keep]


def roi_levels(boxes, num_levels, finest_scale=56):
    """The FPN level each RoI is pooled from, as SingleRoIExtractor.map_roi_levels:
    ``floor(log2(sqrt(w * h) / finest_scale + 1e-6))`` clamped to the levels."""
    scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    return torch.floor(torch.log2(scale / finest_scale + 1e-6)).clamp(min=0, max=num_levels - 1).long()


def multilevel_roi_align(feats, boxes, strides, output_size, sampling_ratio=0, aligned=True, finest_scale=56):
    """RoIAlign of each box (image 0) on the level :func:`roi_levels` assigns it, as
    SingleRoIExtractor: (N, C, *output_size). Each level pools only its own boxes (ONNX
    RoiAlign on the gathered subset, scattered back into place)."""
    levels = roi_levels(boxes, len(feats), finest_scale)
    rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1)
    pooled = feats[0].new_zeros((boxes.shape[0], feats[0].shape[1]) + tuple(output_size))
    for level, (feat, stride) in enumerate(zip(feats, strides)):
        index = torch.where(levels == level)[0]
        level_out = torchvision.ops.roi_align(feat, rois[index], output_size, 1.0 / stride, sampling_ratio, aligned)
        pooled = pooled.index_put((index,), level_out)
    return pooled


def multiclass_detections(boxes, scores, score_thr, iou_threshold, max_per_img):
    """multiclass_nms of one image: every (box, class) pair with a score above ``score_thr``,
    NMS within each class, the ``max_per_img`` best.

    Args:
        boxes (Tensor): (N, C, 4) class-specific boxes.
        scores (Tensor): (N, C) foreground scores (background dropped).

    Returns:
        tuple[Tensor, Tensor, Tensor]: boxes (D, 4), scores (D,), labels (D,) int64,
        highest score first.
    """
    num_classes = scores.shape[1]
    flat_scores = scores.reshape(-1)
    candidates = torch.where(flat_scores > score_thr)[0]
    labels = candidates % num_classes
    cand_boxes = boxes.reshape(-1, 4)[candidates]
    cand_scores = flat_scores[candidates]
    keep = batched_nms(cand_boxes, cand_scores, labels, iou_threshold)[:max_per_img]
    return cand_boxes[keep], cand_scores[keep], labels[keep]
