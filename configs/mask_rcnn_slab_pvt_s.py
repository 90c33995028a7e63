# Mask R-CNN, SLAB-PVT-Small (SLA in every stage, PRepBN), COCO 1x.
# ImageNet weights: convert the authors' slab_pvt_small.pth (https://github.com/xinghaochen/SLAB/releases)
#   python tools/convert_checkpoint.py slab_pvt_small.pth checkpoints/slab_pvt_small_in1k.pth
# or train from scratch with --cfg-options model.backbone.init_cfg=None.
_base_ = './_base_/mask_rcnn_slab_pvt_coco.py'
model = dict(
    backbone=dict(
        arch='small', attn_types='LLLL',
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/slab_pvt_small_in1k.pth')))
