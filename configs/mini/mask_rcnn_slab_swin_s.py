# Mini-COCO, CPU variant of ../mask_rcnn_slab_swin_s.py:
# SLAB-Swin-Small (SLA in stages 1-2 with windows 56/28, PRepBN), from scratch.
_base_ = '../_base_/mask_rcnn_slab_swin_mini.py'
model = dict(backbone=dict(arch='small', attn_types='LLSS', window_sizes=(56, 28, 7, 7), drop_path_rate=0.2))
