# mmdet's Swin (LayerNorm baseline) Mask R-CNN on COCO 1x, same recipe as SLAB-Swin.
_base_ = [
    './models/mask_rcnn_swin_fpn.py',
    './datasets/coco_instance_ms_crop.py',
    './schedules/swin_adamw_1x.py',
]
