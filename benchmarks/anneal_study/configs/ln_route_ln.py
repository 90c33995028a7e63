# The LayerNorm route's control: the mini-COCO LN PVT-T detector (configs/mini/mask_rcnn_pvt_t.py,
# trained 5 epochs by `run_study.py --variants ln_base`: the stand-in for ImageNet LN weights) fine-tuned with the
# anneal study's budget (300 iterations, constant lr after a 50-iteration warm-up) at 2 images per
# batch. load_from comes as --cfg-options.
_base_ = '../../../configs/mini/mask_rcnn_pvt_t.py'
custom_imports = dict(imports=['slab_mmdet', 'anneal_probe'], allow_failed_imports=False)
train_dataloader = dict(batch_size=2)
max_iters = 300
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=100000)
param_scheduler = [dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50)]
custom_hooks = [dict(type='AnnealProbeHook', interval=10)]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=100000, save_last=True))
log_processor = dict(window_size=1, by_epoch=False)
