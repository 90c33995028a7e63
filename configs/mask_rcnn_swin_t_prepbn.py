# Mask R-CNN, Swin-Tiny-PRepBN (softmax window attention, window 7, PRepBN), COCO 1x.
# ImageNet weights: convert the authors' swin_tiny_prepbn.pth (https://github.com/xinghaochen/SLAB/releases)
#   python tools/convert_checkpoint.py swin_tiny_prepbn.pth checkpoints/swin_tiny_prepbn_in1k.pth
# or train from scratch with --cfg-options model.backbone.init_cfg=None.
_base_ = './_base_/mask_rcnn_slab_swin_coco.py'
model = dict(
    backbone=dict(
        arch='tiny', attn_types='SSSS', window_sizes=(7, 7, 7, 7), drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/swin_tiny_prepbn_in1k.pth')))
