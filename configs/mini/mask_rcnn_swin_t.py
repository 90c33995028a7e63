# Mini-COCO, CPU variant of ../mask_rcnn_swin_t.py (the LayerNorm baseline), from scratch.
_base_ = [
    '../_base_/models/mask_rcnn_swin_fpn.py',
    '../_base_/datasets/mini_coco_instance.py',
    '../_base_/schedules/mini_cpu.py',
]
model = dict(
    roi_head=dict(bbox_head=dict(num_classes=6), mask_head=dict(num_classes=6)))
