# SLAB-PVT / PVT-PRepBN Mask R-CNN on COCO 1x: the model base, COCO instances, the PVT AdamW 1x schedule.
_base_ = [
    './models/mask_rcnn_slab_pvt_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    './schedules/pvt_adamw_1x.py',
]
