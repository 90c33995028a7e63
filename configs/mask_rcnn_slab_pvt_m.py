# Mask R-CNN, SLAB-PVT-Medium (SLA in every stage, PRepBN), COCO 1x.
# No SLAB-PVT-Medium ImageNet weights were released (the authors released slab_pvt_tiny only), so
# this starts from the LayerNorm PVT-Medium ImageNet weights that mmdet's PVT configs use and
# anneals them to RepBN during detection training:
#   wget https://github.com/whai362/PVT/releases/download/v2/pvt_medium.pth
#   python tools/convert_checkpoint.py pvt_medium.pth checkpoints/pvt_medium_ln_prepbn.pth
# The conversion gives every norm g = 1 (its LayerNorm) and a fresh RepBN (alpha 0), and
# PRepBNHook anneals g to 0 over the first 2/3 of training. What starts fresh: SLA's
# positional encodings and depth-wise convs on V (PVT's softmax attention has neither) and
# the output norms; PVT's key/value spatial reduction (sr, attn.norm) is not used by SLA
# here (la_sr_ratios 1) and is reported as unused when the weights load.
# Or train from scratch with --cfg-options model.backbone.init_cfg=None.
_base_ = './_base_/mask_rcnn_slab_pvt_coco.py'
model = dict(
    backbone=dict(
        arch='medium', attn_types='LLLL',
        # The output norms start fresh; as plain BatchNorms (alpha 0), like the converted ones.
        out_norm_cfg=dict(type='PRepBN', eps=1e-6, alpha_init=0.0),
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/pvt_medium_ln_prepbn.pth')))
