# Fine-tuning an already annealed detector (g = 0, estimated statistics) at 2 images per
# batch: the stand-in for the released annealed ImageNet weights. load_from comes as
# --cfg-options (a g = 0 checkpoint of anneal_mini.py); norm_eval is the change under study.
_base_ = './anneal_mini.py'
max_iters = 200
train_cfg = dict(max_iters=max_iters)
train_dataloader = dict(batch_size=2)
custom_hooks = [dict(type='AnnealProbeHook', interval=10)]
