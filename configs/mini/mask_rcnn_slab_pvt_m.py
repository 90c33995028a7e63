# Mini-COCO, CPU variant of ../mask_rcnn_slab_pvt_m.py: SLAB-PVT-Medium (SLA in every stage, PRepBN), from scratch.
_base_ = '../_base_/mask_rcnn_slab_pvt_mini.py'
model = dict(backbone=dict(arch='medium', attn_types='LLLL'))
