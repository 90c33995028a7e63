# Baseline: Mask R-CNN with mmdet's PVT-Tiny (LayerNorm, softmax attention), COCO 1x.
_base_ = './_base_/mask_rcnn_pvt_coco.py'
model = dict(
    backbone=dict(
        num_layers=[2, 2, 2, 2],
        init_cfg=dict(type='Pretrained', checkpoint='https://github.com/whai362/PVT/releases/download/v2/pvt_tiny.pth')))
