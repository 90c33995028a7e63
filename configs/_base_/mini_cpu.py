# What makes any of our Mask R-CNN models train on mini COCO on a CPU, from scratch:
# mini COCO at 320x256 (datasets/mini_coco_instance.py), the 5-epoch CPU schedule
# (schedules/mini_cpu.py), and CPU-sized heads. The family bases mask_rcnn_*_mini.py
# apply the heads with `model = {{_base_.mini_model}}` (values only: this file defines
# no model). Mask R-CNN's structure is kept; its widths shrink (FPN/RPN/RoI 128
# channels, a 512-wide box head, a 2-conv mask head) and it samples fewer proposals and
# RoIs, so that a training step costs about half a second on 2 cores. The backbone is
# unchanged.
_base_ = ['./datasets/mini_coco_instance.py', './schedules/mini_cpu.py']

_mini_width = 128
mini_model = dict(
    neck=dict(out_channels=_mini_width),
    rpn_head=dict(in_channels=_mini_width, feat_channels=_mini_width),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=_mini_width),
        bbox_head=dict(in_channels=_mini_width, fc_out_channels=4 * _mini_width, num_classes=6),
        mask_roi_extractor=dict(out_channels=_mini_width),
        mask_head=dict(num_convs=2, in_channels=_mini_width, conv_out_channels=_mini_width, num_classes=6)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=600, max_per_img=300), rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=600, max_per_img=300)))
# The SLAB bases' PRepBN anneal: over the first half (g = 0 at iteration 250 of 500), so that the
# whole transition happens at the full learning rate, before the first step (epoch 3);
# the rest trains the pure-BatchNorm model.
mini_prepbn_hooks = [dict(type='PRepBNHook', anneal_ratio=0.5, schedule='linear')]
