"""The efficient peers the SLAB-PVT models are timed against: mmdet's PVTv2 backbones, as
backbone configs that replace the backbone of a PVT-T (b1) or PVT-S (b2) config (same
output channels, 64-128-320-512, so the neck fits)."""

PVTV2_BACKBONES = {
    'b1': dict(type='PyramidVisionTransformerV2', embed_dims=64, num_layers=[2, 2, 2, 2], init_cfg=None),
    'b2': dict(type='PyramidVisionTransformerV2', embed_dims=64, num_layers=[3, 4, 6, 3], init_cfg=None),
}


def pvtv2_options(variant):
    """cfg_options that turn a PVT config into mmdet's PVTv2-``variant`` (random weights)."""
    if variant not in PVTV2_BACKBONES:
        raise ValueError(f'PVTv2 variant {variant!r}: expected one of {sorted(PVTV2_BACKBONES)}')
    return {'model.backbone': dict(_delete_=True, **PVTV2_BACKBONES[variant])}
