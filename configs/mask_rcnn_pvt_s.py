# Baseline: Mask R-CNN with mmdet's PVT-Small (LayerNorm, softmax attention), COCO 1x:
# what the paper's PVT-S latency row (64.0 ms -> 59.6 ms with PRepBN) compares against.
_base_ = './_base_/mask_rcnn_pvt_coco.py'
model = dict(
    backbone=dict(
        num_layers=[3, 4, 6, 3],
        init_cfg=dict(type='Pretrained', checkpoint='https://github.com/whai362/PVT/releases/download/v2/pvt_small.pth')))
