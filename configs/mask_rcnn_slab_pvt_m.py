# Mask R-CNN, SLAB-PVT-Medium (SLA in every stage, PRepBN), COCO 1x.
# ImageNet weights: convert the authors' slab_pvt_medium.pth (https://github.com/xinghaochen/SLAB/releases)
#   python tools/convert_checkpoint.py slab_pvt_medium.pth checkpoints/slab_pvt_medium_in1k.pth
# or train from scratch with --cfg-options model.backbone.init_cfg=None.
_base_ = './_base_/mask_rcnn_slab_pvt_coco.py'
model = dict(
    backbone=dict(
        arch='medium', attn_types='LLLL',
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/slab_pvt_medium_in1k.pth')))
