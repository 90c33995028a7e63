# Mini-COCO, CPU variant of ../mask_rcnn_slab_pvt_s.py: SLAB-PVT-Small (SLA in every stage, PRepBN), from scratch.
_base_ = '../_base_/mask_rcnn_slab_pvt_mini.py'
model = dict(backbone=dict(arch='small', attn_types='LLLL'))
