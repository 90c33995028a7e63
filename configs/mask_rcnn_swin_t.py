# Baseline: Mask R-CNN with mmdet's Swin-Tiny (LayerNorm, softmax window attention),
# COCO 1x with the same multi-scale/crop augmentation and AdamW recipe as SLAB-Swin.
_base_ = [
    './_base_/models/mask_rcnn_swin_fpn.py',
    './_base_/datasets/coco_instance_ms_crop.py',
    './_base_/schedules/swin_adamw_1x.py',
]
model = dict(
    backbone=dict(
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://github.com/SwinTransformer/storage/releases/download/v1.0.0/'
            'swin_tiny_patch4_window7_224.pth')))
