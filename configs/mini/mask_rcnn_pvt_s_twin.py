# Mini-COCO, CPU variant of ../mask_rcnn_pvt_s_twin.py: the LayerNorm + softmax twin of
# SLAB-PVT-S (PVT-S in this code's backbone), from scratch.
_base_ = '../_base_/mask_rcnn_slab_pvt_mini.py'
model = dict(
    backbone=dict(
        arch='small', attn_types='SSSS', norm_cfg=dict(type='LN', eps=1e-6)))
custom_hooks = []   # no PRepBN: nothing to anneal
find_unused_parameters = False
