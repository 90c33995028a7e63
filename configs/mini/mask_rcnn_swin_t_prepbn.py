# Mini-COCO, CPU variant of ../mask_rcnn_swin_t_prepbn.py:
# Swin-Tiny-PRepBN (softmax window attention, window 7, PRepBN), from scratch.
_base_ = '../_base_/mask_rcnn_slab_swin_mini.py'
model = dict(backbone=dict(arch='tiny', attn_types='SSSS', window_sizes=(7, 7, 7, 7), drop_path_rate=0.1))
