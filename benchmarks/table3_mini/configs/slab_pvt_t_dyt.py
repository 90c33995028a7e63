# SLAB-PVT-T with DyT (gamma * tanh(alpha * x) + beta, alpha 0.5 at the start) in place of every
# norm, the output norms included (SLA attention kept; no anneal).
_base_ = '../../../configs/mini/mask_rcnn_slab_pvt_t.py'
model = dict(backbone=dict(norm_cfg=dict(_delete_=True, type='DyT', alpha_init=0.5)))
custom_hooks = []
find_unused_parameters = False
