# Mask R-CNN, the LayerNorm + softmax twin of SLAB-PVT-M (and PVT-M-PRepBN), COCO 1x:
# SLABPyramidVisionTransformer with PVT v1's softmax spatial-reduction attention (sr ratios
# 8-4-2-1) and LayerNorm (eps 1e-6), i.e. PVT-M in this code (SDPA attention), with the
# widths, depths and heads of the SLAB model. What SLAB itself buys is measured against this
# model; mmdet's PVT-M (configs/mask_rcnn_pvt_m.py) is the same architecture in a slower
# implementation. No ImageNet weights exist in this layout, so init_cfg=None: for COCO
# accuracy use mmdet's baseline config, which loads them.
_base_ = './_base_/mask_rcnn_slab_pvt_coco.py'
model = dict(
    backbone=dict(
        arch='medium', attn_types='SSSS', norm_cfg=dict(type='LN', eps=1e-6),
        init_cfg=None))
custom_hooks = []   # no PRepBN: nothing to anneal
find_unused_parameters = False
