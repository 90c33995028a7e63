# Mini-COCO, CPU variant of ../mask_rcnn_swin_s_prepbn.py:
# Swin-Small-PRepBN (softmax window attention, window 7, PRepBN), from scratch.
_base_ = '../_base_/mask_rcnn_slab_swin_mini.py'
model = dict(backbone=dict(arch='small', attn_types='SSSS', window_sizes=(7, 7, 7, 7), drop_path_rate=0.2))
