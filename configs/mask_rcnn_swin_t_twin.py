# Mask R-CNN, the LayerNorm + softmax twin of SLAB-Swin-T (and Swin-T-PRepBN), COCO 1x:
# SLABSwinTransformer with Swin's softmax window attention (windows 7, relative position bias)
# and LayerNorm (eps 1e-5), i.e. Swin-T in this code (SDPA attention), with the widths, depths
# and heads of the SLAB model. What SLAB itself buys is measured against this model; mmdet's
# Swin-T (configs/mask_rcnn_swin_t.py) is the same architecture in a slower implementation. No
# ImageNet weights exist in this layout, so init_cfg=None: for COCO accuracy use mmdet's
# baseline config, which loads them.
_base_ = './_base_/mask_rcnn_slab_swin_coco.py'
model = dict(
    backbone=dict(
        arch='tiny', attn_types='SSSS', window_sizes=(7, 7, 7, 7), norm_cfg=dict(type='LN', eps=1e-5),
        drop_path_rate=0.1,
        init_cfg=None))
custom_hooks = []   # no PRepBN: nothing to anneal
find_unused_parameters = False
