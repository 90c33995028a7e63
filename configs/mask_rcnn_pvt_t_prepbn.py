# Mask R-CNN, PVT-Tiny-PRepBN (softmax attention, PRepBN), COCO 1x.
# ImageNet weights: convert the authors' pvt_tiny_prepbn.pth (https://github.com/xinghaochen/SLAB/releases)
#   python tools/convert_checkpoint.py pvt_tiny_prepbn.pth checkpoints/pvt_tiny_prepbn_in1k.pth
# or train from scratch with --cfg-options model.backbone.init_cfg=None.
_base_ = './_base_/mask_rcnn_slab_pvt_coco.py'
model = dict(
    backbone=dict(
        arch='tiny', attn_types='SSSS',
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/pvt_tiny_prepbn_in1k.pth')))
