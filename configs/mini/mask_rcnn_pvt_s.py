# Mini-COCO, CPU variant of ../mask_rcnn_pvt_s.py (the LayerNorm baseline), from scratch.
_base_ = [
    '../_base_/models/mask_rcnn_pvt_fpn.py',
    '../_base_/datasets/mini_coco_instance.py',
    '../_base_/schedules/mini_cpu.py',
]
model = dict(
    backbone=dict(num_layers=[3, 4, 6, 3]),
    roi_head=dict(bbox_head=dict(num_classes=6), mask_head=dict(num_classes=6)))
