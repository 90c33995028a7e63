# Mask R-CNN with mmdet's own PVT (v1): LayerNorm and softmax spatial-reduction
# attention. The baseline that the SLAB models are compared against.
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'
custom_imports = dict(imports=['slab_mmdet'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='PyramidVisionTransformer',
        num_layers=[2, 2, 2, 2]),
    neck=dict(in_channels=[64, 128, 320, 512]))
