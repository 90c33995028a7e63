# Mask R-CNN with a SLAB-Swin backbone (SLABSwinTransformer) and FPN.
# PRepBN annealing as in mask_rcnn_slab_pvt_fpn.py: linear, over the first 2/3 of
# training (COCO 1x: until the learning-rate step at epoch 8).
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'
custom_imports = dict(imports=['slab_mmdet'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='SLABSwinTransformer',
        arch='tiny',
        attn_types='LLSS',
        window_sizes=(56, 28, 7, 7),
        drop_path_rate=0.1,
        norm_cfg=dict(type='PRepBN', eps=1e-5),
        out_indices=(0, 1, 2, 3)),
    neck=dict(in_channels=[96, 192, 384, 768]))

custom_hooks = [dict(type='PRepBNHook', anneal_ratio=2 / 3, schedule='linear')]
find_unused_parameters = True  # see mask_rcnn_slab_pvt_fpn.py
