# Mini-COCO, CPU variant of ../mask_rcnn_pvt_t.py (mmdet's PVT-Tiny baseline).
_base_ = [
    '../_base_/models/mask_rcnn_pvt_fpn.py',
    '../_base_/datasets/mini_coco_instance.py',
    '../_base_/schedules/mini_cpu.py',
]
model = dict(roi_head=dict(bbox_head=dict(num_classes=6), mask_head=dict(num_classes=6)))
