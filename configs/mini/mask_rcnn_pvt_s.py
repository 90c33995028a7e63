# Mini-COCO, CPU variant of ../mask_rcnn_pvt_s.py (the LayerNorm baseline), from scratch.
_base_ = '../_base_/mask_rcnn_pvt_mini.py'
model = dict(backbone=dict(num_layers=[3, 4, 6, 3]))
