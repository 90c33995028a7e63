# SLAB-Swin / Swin-PRepBN Mask R-CNN on COCO 1x: multi-scale + crop augmentation, the Swin AdamW 1x schedule.
_base_ = [
    './models/mask_rcnn_slab_swin_fpn.py',
    './datasets/coco_instance_ms_crop.py',
    './schedules/swin_adamw_1x.py',
]
