# mmdet's PVT (LayerNorm baseline) Mask R-CNN on COCO 1x, same recipe as SLAB-PVT.
_base_ = [
    './models/mask_rcnn_pvt_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    './schedules/pvt_adamw_1x.py',
]
