# The anneal study's training run: the mini-COCO SLAB-PVT-T Mask R-CNN
# (configs/mini/mask_rcnn_slab_pvt_t.py, unchanged model and data) as a fixed number
# of iterations at constant learning rate after a 50-iteration warm-up, with the
# anneal over the first `anneal_iters` and AnnealProbeHook logging every 10.
# Batch size, seed and the one change under study come as --cfg-options.
# The baseline is the reference layer (RepBN alpha starts at 1) at one image per batch,
# whatever the configs' defaults are now (alpha_init=0.0, two images per batch).
_base_ = '../../../configs/mini/mask_rcnn_slab_pvt_t.py'
custom_imports = dict(imports=['slab_mmdet', 'anneal_probe'], allow_failed_imports=False)
model = dict(backbone=dict(norm_cfg=dict(alpha_init=1.0)))
train_dataloader = dict(batch_size=1)

max_iters = 300
anneal_iters = 250
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=100000)
param_scheduler = [dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50)]
custom_hooks = [
    dict(type='PRepBNHook', anneal_iters=anneal_iters, schedule='linear'),
    dict(type='AnnealProbeHook', interval=10),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=100000, save_last=True))
log_processor = dict(window_size=1, by_epoch=False)
