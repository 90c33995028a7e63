# Baseline: Mask R-CNN with mmdet's Swin-Tiny (LayerNorm, softmax window attention),
# COCO 1x with the same multi-scale/crop augmentation and AdamW recipe as SLAB-Swin.
_base_ = './_base_/mask_rcnn_swin_coco.py'
model = dict(
    backbone=dict(
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://github.com/SwinTransformer/storage/releases/download/v1.0.0/'
            'swin_tiny_patch4_window7_224.pth')))
