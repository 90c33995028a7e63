# Schedule and runtime for mini COCO on a CPU (the demo, the tests, quick trials).
# Inherits mmdet's default runtime and makes it fit a 2-core machine: AdamW, 5 epochs
# (500 iterations of two images on the 200-image train split: ~10 minutes on 2 cores),
# frequent logging, gloo for multi-process CPU runs, a fixed seed.
_base_ = 'mmdet::_base_/default_runtime.py'

max_epochs = 5
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[3, 4], gamma=0.1)
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-4),
    clip_grad=dict(max_norm=10.0, norm_type=2))
auto_scale_lr = dict(enable=False, base_batch_size=2)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', interval=max_epochs, max_keep_ckpts=1))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
log_processor = dict(window_size=20)
randomness = dict(seed=0)
