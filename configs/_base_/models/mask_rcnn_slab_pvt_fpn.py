# Mask R-CNN with a SLAB-PVT backbone (SLABPyramidVisionTransformer) and FPN.
# The backbone's PRepBN norms are annealed from LayerNorm to RepBN by PRepBNHook:
# g goes linearly from 1 to 0 over the first 2/3 of training (for COCO 1x: until
# the first learning-rate step at epoch 8), and the remaining third trains the
# pure-BatchNorm model that deploys. Layers loaded from an already annealed
# checkpoint (the released SLAB ImageNet weights have g = 0) stay at g = 0
# (start_g='model'); only the new output norms anneal.
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'
custom_imports = dict(imports=['slab_mmdet'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='SLABPyramidVisionTransformer',
        arch='small',
        attn_types='LLLL',
        drop_path_rate=0.1,
        norm_cfg=dict(type='PRepBN', eps=1e-6),
        out_indices=(0, 1, 2, 3)),
    neck=dict(in_channels=[64, 128, 320, 512]))

custom_hooks = [dict(type='PRepBNHook', anneal_ratio=2 / 3, schedule='linear')]
# PRepBN skips the branch whose weight is 0 (no BatchNorm at g = 1, no LayerNorm at
# g = 0), so under DDP some parameters get no gradient in some iterations.
find_unused_parameters = True
