# The LayerNorm + softmax twin of /work/main/configs/mask_rcnn_slab_pvt_s.py
# (derived by slab_mmdet.benchmark.twin: softmax attention and LayerNorm everywhere).
_base_ = '/work/main/configs/mask_rcnn_slab_pvt_s.py'
model = dict(backbone=dict(_delete_=True, **{'type': 'SLABPyramidVisionTransformer', 'arch': 'small', 'attn_types': 'SSSS', 'drop_path_rate': 0.1, 'norm_cfg': {'type': 'LN', 'eps': 1e-06}, 'out_indices': (0, 1, 2, 3), 'init_cfg': None}))
custom_hooks = []
