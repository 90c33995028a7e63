# Mini-COCO, CPU variant of ../mask_rcnn_slab_swin_s.py: SLAB-Swin-Small (SLA in stages 1-2 with windows 56/28, PRepBN), from scratch.
_base_ = [
    '../_base_/models/mask_rcnn_slab_swin_fpn.py',
    '../_base_/datasets/mini_coco_instance.py',
    '../_base_/schedules/mini_cpu.py',
]
model = dict(
    backbone=dict(arch='small', attn_types='LLSS', window_sizes=(56, 28, 7, 7), drop_path_rate=0.2),
    roi_head=dict(bbox_head=dict(num_classes=6), mask_head=dict(num_classes=6)))
