"""The efficient peers the SLAB-PVT models are timed against, as backbone configs that replace
the backbone of a PVT-T (b1) or PVT-S (b2) config: mmdet's PVTv2, and timm models
(``TimmPeerBackbone``): timm's PVTv2, whose attention runs through torch's
scaled_dot_product_attention (the fastest implementation of that peer here), and MIT's
EfficientViT (BatchNorm and ReLU linear attention throughout: the deployment-minded design
SLAB converts a transformer into). Every peer gives four maps at strides 4-32; the EfficientViT
ones have other channels, which :func:`timm_peer_options` gives the neck."""
from mmdet.registry import MODELS
from mmengine.model import BaseModule

PVTV2_BACKBONES = {
    'b1': dict(type='PyramidVisionTransformerV2', embed_dims=64, num_layers=[2, 2, 2, 2], init_cfg=None),
    'b2': dict(type='PyramidVisionTransformerV2', embed_dims=64, num_layers=[3, 4, 6, 3], init_cfg=None),
}
# timm model -> the channels of its four feature maps (strides 4, 8, 16, 32).
TIMM_PEER_CHANNELS = {
    'pvt_v2_b1': (64, 128, 320, 512),
    'pvt_v2_b2': (64, 128, 320, 512),
    'efficientvit_b2': (48, 96, 192, 384),
    'efficientvit_b3': (64, 128, 256, 512),
}
TIMM_PEERS = tuple(TIMM_PEER_CHANNELS)
TIMM_PEER_BACKBONES = {name: dict(type='TimmPeerBackbone', model_name=name) for name in TIMM_PEERS}


def timm_peer_options(name):
    """The ``model`` overrides that put timm's ``name`` in place of a detector's backbone, with
    the neck reading its channels."""
    if name not in TIMM_PEER_CHANNELS:
        raise ValueError(f'timm peer {name!r}: expected one of {", ".join(TIMM_PEERS)}')
    return dict(backbone=dict(_delete_=True, **TIMM_PEER_BACKBONES[name]),
                neck=dict(in_channels=list(TIMM_PEER_CHANNELS[name])))


def pvtv2_options(variant):
    """cfg_options that turn a PVT config into mmdet's PVTv2-``variant`` (random weights)."""
    if variant not in PVTV2_BACKBONES:
        raise ValueError(f'PVTv2 variant {variant!r}: expected one of {sorted(PVTV2_BACKBONES)}')
    return {'model.backbone': dict(_delete_=True, **PVTV2_BACKBONES[variant])}


@MODELS.register_module()
class TimmPeerBackbone(BaseModule):
    """A timm model's stage outputs (``features_only=True``) as an mmdet backbone: a tuple of
    NCHW maps, strides 4-32. Random weights (a latency peer, not a trained model).

    Args:
        model_name (str): one of ``TIMM_PEERS``.
        out_indices (tuple[int]): the stages returned.
    """

    def __init__(self, model_name, out_indices=(0, 1, 2, 3), init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if model_name not in TIMM_PEERS:
            raise ValueError(f'TimmPeerBackbone: model_name {model_name!r} is not a timed peer; '
                             f'expected one of {", ".join(TIMM_PEERS)}')
        import timm
        self.model = timm.create_model(model_name, pretrained=False, features_only=True,
                                       out_indices=tuple(out_indices))
        self.num_features = tuple(self.model.feature_info.channels())

    def forward(self, x):
        return tuple(self.model(x))


__all__ = ['PVTV2_BACKBONES', 'TIMM_PEERS', 'TIMM_PEER_BACKBONES', 'TIMM_PEER_CHANNELS', 'TimmPeerBackbone',
           'pvtv2_options', 'timm_peer_options']
