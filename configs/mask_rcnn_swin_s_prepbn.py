# Mask R-CNN, Swin-Small-PRepBN (softmax window attention, window 7, PRepBN), COCO 1x.
# ImageNet weights: convert the authors' swin_small_prepbn.pth (https://github.com/xinghaochen/SLAB/releases)
#   python tools/convert_checkpoint.py swin_small_prepbn.pth checkpoints/swin_small_prepbn_in1k.pth
# or train from scratch with --cfg-options model.backbone.init_cfg=None.
_base_ = './_base_/mask_rcnn_slab_swin_coco.py'
model = dict(
    backbone=dict(
        arch='small', attn_types='SSSS', window_sizes=(7, 7, 7, 7), drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/swin_small_prepbn_in1k.pth')))
