"""The demo's picture of detections: mini COCO val images with their ground truth, the trained
detector's detections and the fused detector's beside them, drawn by mmdet's DetLocalVisualizer."""
import uuid

import numpy as np

COLUMNS = ('ground truth', 'trained (PRepBN, g = 0)', 'fused (no norm layers)')
HEADER = 28   # pixels above each column for its title


def _ground_truth(dataset_cfg, index):
    """The image (RGB) and its annotations, in the original image's pixels."""
    import copy

    from mmcv.transforms import Compose
    from mmdet.registry import DATASETS
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    cfg = copy.deepcopy(dataset_cfg)
    cfg.pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask=True)]
    dataset = DATASETS.build(cfg)
    data = Compose(cfg.pipeline)(dataset.get_data_info(index))
    sample = DetDataSample(gt_instances=InstanceData(bboxes=data['gt_bboxes'].tensor,
                                                     labels=np.asarray(data['gt_bboxes_labels']),
                                                     masks=data['gt_masks']))
    return data['img'][..., ::-1].copy(), data['img_path'], sample


def _fit(picture, cell_hw):
    """``picture`` scaled to fit a white cell of ``cell_hw``, centred."""
    import cv2
    h, w = cell_hw
    scale = min(h / picture.shape[0], w / picture.shape[1])
    ph, pw = max(1, int(round(picture.shape[0] * scale))), max(1, int(round(picture.shape[1] * scale)))
    cell = np.full((h, w, 3), 255, np.uint8)
    top, left = (h - ph) // 2, (w - pw) // 2
    cell[top:top + ph, left:left + pw] = cv2.resize(picture, (pw, ph))
    return cell


def _drawn(instances, score_thr, max_per_image):
    keep = (instances.scores >= score_thr).nonzero().flatten()[:max_per_image]
    return instances[keep]


def detection_grid(models, dataset_cfg, indices, out_path, score_thr=0.3, max_per_image=20, cell_hw=(256, 320)):
    """Draw ``indices`` of the dataset (rows) x (ground truth, each of ``models``) (columns) and
    save the grid as a PNG at ``out_path``.

    Args:
        models (list[nn.Module]): detectors with ``cfg`` and ``dataset_meta`` (the trained one,
            then the fused one), run with mmdet's ``inference_detector``.
        dataset_cfg (dict): the dataset whose images and annotations are drawn (mini COCO val).
        score_thr (float), max_per_image (int): which detections are drawn: at most
            ``max_per_image`` of those scoring ``score_thr`` or more, best first.
        cell_hw (tuple[int, int]): each picture is fitted into a cell of this size (keeping
            its aspect ratio, white margins); the grid is ``HEADER + rows * h`` by
            ``columns * w`` pixels.

    Returns:
        dict: ``grid_hw`` (the PNG's height and width), ``images`` (per row: the image path and,
        per column after the first, the drawn detections: labels, scores, boxes).
    """
    import cv2
    from mmdet.apis import inference_detector
    from mmdet.visualization import DetLocalVisualizer

    visualizer = DetLocalVisualizer(name=f'demo_{uuid.uuid4().hex[:8]}')
    visualizer.dataset_meta = models[0].dataset_meta
    rows, record = [], []
    for index in indices:
        image, path, gt = _ground_truth(dataset_cfg, index)
        visualizer.add_datasample('gt', image, data_sample=gt, draw_gt=True, draw_pred=False, show=False)
        cells = [visualizer.get_image()]
        entry = dict(image=path, detections=[])
        for model in models:
            result = inference_detector(model, path)
            result.pred_instances = _drawn(result.pred_instances, score_thr, max_per_image)
            visualizer.add_datasample('pred', image, data_sample=result, draw_gt=False, draw_pred=True,
                                      pred_score_thr=score_thr, show=False)
            cells.append(visualizer.get_image())
            pred = result.pred_instances
            entry['detections'].append(dict(labels=pred.labels.tolist(), scores=pred.scores.tolist(),
                                            boxes=pred.bboxes.tolist()))
        rows.append(np.concatenate([_fit(c, cell_hw) for c in cells], axis=1))
        record.append(entry)
    header = np.full((HEADER, rows[0].shape[1], 3), 255, np.uint8)
    for k, title in enumerate(COLUMNS[:1 + len(models)]):
        cv2.putText(header, title, (k * cell_hw[1] + 6, HEADER - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
    grid = np.concatenate([header] + rows, axis=0)
    cv2.imwrite(out_path, grid[..., ::-1])   # RGB -> BGR
    return dict(grid_hw=list(grid.shape[:2]), score_thr=score_thr, columns=list(COLUMNS[:1 + len(models)]),
                images=record)
