# Mini-COCO, CPU variant of ../mask_rcnn_swin_t_twin.py: the LayerNorm + softmax twin of
# SLAB-Swin-T (Swin-T in this code's backbone), from scratch.
_base_ = '../_base_/mask_rcnn_slab_swin_mini.py'
model = dict(
    backbone=dict(
        arch='tiny', attn_types='SSSS', window_sizes=(7, 7, 7, 7), norm_cfg=dict(type='LN', eps=1e-5),
        drop_path_rate=0.1))
custom_hooks = []   # no PRepBN: nothing to anneal
find_unused_parameters = False
