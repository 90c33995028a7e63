# Mini-COCO, CPU: mmdet's PVTv2-b1 (LayerNorm, linear spatial-reduction attention, overlapping
# patch embedding, conv FFN), the efficient peer of SLAB-PVT-T. The demo times its backbone.
_base_ = './mask_rcnn_pvt_t.py'
model = dict(backbone=dict(type='PyramidVisionTransformerV2', embed_dims=64, num_layers=[2, 2, 2, 2]))
