# COCO 1x (12 epochs, lr steps at 8 and 11) with the Swin / SLAB-Swin detection recipe:
# the PVT 1x schedule (pvt_adamw_1x.py: AdamW lr 1e-4, batch 16) with weight decay 0.05
# except on norms and position tables, and 1000 warm-up iterations.
_base_ = './pvt_adamw_1x.py'

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end={{_base_.max_epochs}}, by_epoch=True, milestones=[8, 11], gamma=0.1)
]
optim_wrapper = dict(
    paramwise_cfg=dict(
        custom_keys={
            'absolute_pos_embed': dict(decay_mult=0.),
            'relative_position_bias_table': dict(decay_mult=0.),
            'positional_encoding': dict(decay_mult=0.),
            'pos_embed': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.)
        }),
    optimizer=dict(betas=(0.9, 0.999), weight_decay=0.05))
