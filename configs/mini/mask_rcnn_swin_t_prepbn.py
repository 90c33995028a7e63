# Mini-COCO, CPU variant of ../mask_rcnn_swin_t_prepbn.py: Swin-Tiny-PRepBN (softmax window attention, window 7, PRepBN), from scratch.
_base_ = [
    '../_base_/models/mask_rcnn_slab_swin_fpn.py',
    '../_base_/datasets/mini_coco_instance.py',
    '../_base_/schedules/mini_cpu.py',
]
model = dict(
    backbone=dict(arch='tiny', attn_types='SSSS', window_sizes=(7, 7, 7, 7), drop_path_rate=0.1),
    roi_head=dict(bbox_head=dict(num_classes=6), mask_head=dict(num_classes=6)))
