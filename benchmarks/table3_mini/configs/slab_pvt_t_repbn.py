# SLAB-PVT-T with RepBN from the start (g = 0 throughout: no LayerNorm phase, no anneal), the
# collapse PRepBN exists to avoid. Everything else as ../../../configs/mini/mask_rcnn_slab_pvt_t.py.
_base_ = '../../../configs/mini/mask_rcnn_slab_pvt_t.py'
model = dict(backbone=dict(norm_cfg=dict(_delete_=True, type='RepBN', eps=1e-5)))
custom_hooks = []
find_unused_parameters = False
