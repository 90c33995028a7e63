# mmdet's PVT (LayerNorm baseline) Mask R-CNN on mini COCO on a CPU, from scratch (see mini_cpu.py).
_base_ = ['./models/mask_rcnn_pvt_fpn.py', './mini_cpu.py']
model = {{_base_.mini_model}}
