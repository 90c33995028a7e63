# Mask R-CNN, Swin-Small-PRepBN (softmax window attention, window 7, PRepBN), COCO 1x.
# No Swin-S-PRepBN ImageNet weights were released (the authors released swin_tiny_prepbn
# only), so this starts from the LayerNorm Swin-S ImageNet weights that mmdet's Swin configs
# use and anneals them to RepBN during detection training:
#   wget https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_small_patch4_window7_224.pth
#   python tools/convert_checkpoint.py swin_small_patch4_window7_224.pth checkpoints/swin_small_ln_prepbn.pth
# The conversion gives every norm g = 1 (its LayerNorm) and a fresh RepBN (alpha 0), and
# PRepBNHook anneals g to 0 over the first 2/3 of training; the output norms start fresh.
# Or train from scratch with --cfg-options model.backbone.init_cfg=None.
_base_ = './_base_/mask_rcnn_slab_swin_coco.py'
model = dict(
    backbone=dict(
        arch='small', attn_types='SSSS', window_sizes=(7, 7, 7, 7), drop_path_rate=0.2,
        # The output norms start fresh; as plain BatchNorms (alpha 0), like the converted ones.
        out_norm_cfg=dict(type='PRepBN', eps=1e-5, alpha_init=0.0),
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/swin_small_ln_prepbn.pth')))
