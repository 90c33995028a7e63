# Mini-COCO, CPU variant of ../mask_rcnn_pvt_t_prepbn.py: PVT-Tiny-PRepBN (softmax attention, PRepBN), from scratch.
_base_ = [
    '../_base_/models/mask_rcnn_slab_pvt_fpn.py',
    '../_base_/datasets/mini_coco_instance.py',
    '../_base_/schedules/mini_cpu.py',
]
model = dict(
    backbone=dict(arch='tiny', attn_types='SSSS'),
    roi_head=dict(bbox_head=dict(num_classes=6), mask_head=dict(num_classes=6)))
