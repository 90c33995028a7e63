# Mini-COCO, CPU variant of ../mask_rcnn_pvt_s_prepbn.py: PVT-Small-PRepBN (softmax attention, PRepBN), from scratch.
_base_ = '../_base_/mask_rcnn_slab_pvt_mini.py'
model = dict(backbone=dict(arch='small', attn_types='SSSS'))
