# Mini-COCO, CPU variant of ../mask_rcnn_pvt_t.py (mmdet's PVT-Tiny baseline).
_base_ = '../_base_/mask_rcnn_pvt_mini.py'
