# Mask R-CNN, SLAB-Swin-Small (SLA in stages 1-2 with windows 56/28, PRepBN), COCO 1x.
# ImageNet weights: convert the authors' slab_swin_small.pth (https://github.com/xinghaochen/SLAB/releases)
#   python tools/convert_checkpoint.py slab_swin_small.pth checkpoints/slab_swin_small_in1k.pth
# or train from scratch with --cfg-options model.backbone.init_cfg=None.
_base_ = './_base_/mask_rcnn_slab_swin_coco.py'
model = dict(
    backbone=dict(
        arch='small', attn_types='LLSS', window_sizes=(56, 28, 7, 7), drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/slab_swin_small_in1k.pth')))
