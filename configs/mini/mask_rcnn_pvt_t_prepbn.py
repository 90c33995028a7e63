# Mini-COCO, CPU variant of ../mask_rcnn_pvt_t_prepbn.py: PVT-Tiny-PRepBN (softmax attention, PRepBN), from scratch.
_base_ = '../_base_/mask_rcnn_slab_pvt_mini.py'
model = dict(backbone=dict(arch='tiny', attn_types='SSSS'))
