# SLAB-PVT-T with LayerNorm throughout (SLA attention kept): what SLA alone costs in accuracy.
_base_ = '../../../configs/mini/mask_rcnn_slab_pvt_t.py'
model = dict(backbone=dict(norm_cfg=dict(_delete_=True, type='LN', eps=1e-6)))
custom_hooks = []
find_unused_parameters = False
