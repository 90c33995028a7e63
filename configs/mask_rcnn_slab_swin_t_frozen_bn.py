# Mask R-CNN, SLAB-Swin-Tiny, COCO 1x, with the SLAB authors' detection recipe: the released ImageNet
# weights are already annealed (g = 0), their BatchNorm statistics stay frozen (norm_eval=True,
# as in the authors' detection backbones and mmdet's ResNets: 2-image batches give poor
# statistics), and the output norms, which no ImageNet model has, are LayerNorms
# (out_norm_cfg defaults to LN under norm_eval). Nothing anneals in the backbone; fusion
# folds every norm but the 4 output LayerNorms. Training with frozen statistics that were never estimated
# (e.g. --cfg-options model.backbone.init_cfg=None) is an error naming the layer.
_base_ = './mask_rcnn_slab_swin_t.py'
model = dict(backbone=dict(norm_eval=True))
custom_hooks = []   # g is 0 in every loaded PRepBN: nothing to anneal
