# Mini-COCO, CPU variant of ../mask_rcnn_swin_t.py (the LayerNorm baseline), from scratch.
_base_ = '../_base_/mask_rcnn_swin_mini.py'
