# As ln_route_slab.py, but keeping PVT's softmax attention (PVT-T-PRepBN): the anneal alone,
# with no attention to relearn.
_base_ = './ln_route_slab.py'
model = dict(backbone=dict(attn_types='SSSS'))
