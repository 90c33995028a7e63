# The LayerNorm route: the LN PVT-T detector converted by tools/convert_checkpoint.py (each
# LayerNorm -> the LN branch of a PRepBN, g = 1; neck and heads kept) and fine-tuned as SLAB-PVT-T
# (SLA in every stage: its depth-wise convs and positional encodings start fresh) with the anneal
# (g 1 -> 0 over 250 of 300 iterations) at 2 images per batch. load_from comes as --cfg-options.
_base_ = './anneal_mini.py'
train_dataloader = dict(batch_size=2)
# The output norms (not in the checkpoint) start with alpha 0 too, as in the LN-route COCO configs.
model = dict(backbone=dict(out_norm_cfg=dict(type='PRepBN', eps=1e-6, alpha_init=0.0)))
