"""The SLAB backbones in timm's model registry, for ImageNet (pre-)training with timm.

``import slab_mmdet`` registers these names with ``timm.create_model``:

* ``slab_pvt_{tiny,small,medium}``: SLABPyramidVisionTransformer, attn_types 'LLLL'
* ``pvt_{tiny,small,medium}_prepbn``: SLABPyramidVisionTransformer, attn_types 'SSSS'
* ``slab_swin_{tiny,small}``: SLABSwinTransformer, 'LLSS', windows (56, 28, 7, 7)
* ``swin_{tiny,small}_prepbn``: SLABSwinTransformer, 'SSSS', windows 7

``timm.create_model(name)`` is an image classifier: the backbone, global average
pooling of its last stage, and a linear head. ``features_only=True`` returns the
backbone itself (the very module mmdet builds), whose forward gives the stage
feature maps, with timm's ``feature_info``. Other keyword arguments go to the
backbone (e.g. ``drop_path_rate``, ``norm_cfg``, ``with_cp``).
"""
import torch.nn as nn
from timm.models import register_model
from timm.models._features import FeatureInfo

from .backbones import SLABPyramidVisionTransformer, SLABSwinTransformer

# Each family: a timm name pattern, the backbone, and what sets the family apart; one variant
# per size in the backbone's arch_zoo (the arch tables are the one list of sizes).
TIMM_FAMILIES = (
    ('slab_pvt_{size}', SLABPyramidVisionTransformer, dict(attn_types='LLLL')),
    ('pvt_{size}_prepbn', SLABPyramidVisionTransformer, dict(attn_types='SSSS')),
    ('slab_swin_{size}', SLABSwinTransformer, dict(attn_types='LLSS', window_sizes=(56, 28, 7, 7))),
    ('swin_{size}_prepbn', SLABSwinTransformer, dict(attn_types='SSSS', window_sizes=(7, 7, 7, 7))),
)
TIMM_VARIANTS = {pattern.format(size=size): (backbone, dict(arch=size, **settings))
                 for pattern, backbone, settings in TIMM_FAMILIES for size in backbone.arch_zoo}
IMAGENET_CFG = dict(num_classes=1000, input_size=(3, 224, 224), mean=(0.485, 0.456, 0.406),
                    std=(0.229, 0.224, 0.225), interpolation='bicubic', crop_pct=0.9, first_conv='backbone.'
                    'patch_embed.proj', classifier='head')


def _feature_info(backbone):
    """timm's description of each stage output: channels, stride and module name."""
    stages = range(len(backbone.num_features))
    info = [dict(num_chs=backbone.num_features[i], reduction=4 * 2 ** i, module=f'stages.{i}') for i in stages]
    return FeatureInfo(info, [list(stages).index(i) for i in backbone.out_indices])


class SLABImageClassifier(nn.Module):
    """A SLAB backbone with global average pooling of its last stage and a linear head."""

    def __init__(self, backbone, num_classes=1000, drop_rate=0.):
        super().__init__()
        self.backbone = backbone
        self.num_features = backbone.num_features[backbone.out_indices[-1]]
        self.num_classes = num_classes
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.pretrained_cfg = dict(IMAGENET_CFG, num_classes=num_classes)
        self.default_cfg = self.pretrained_cfg

    def forward_features(self, x):
        return self.backbone(x)[-1]

    def forward_head(self, x, pre_logits=False):
        x = self.head_drop(x.mean(dim=(2, 3)))
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def get_classifier(self):
        return self.head

    def reset_classifier(self, num_classes, global_pool=None):
        if global_pool not in (None, 'avg'):
            raise ValueError(f"only global average pooling is supported, got global_pool={global_pool!r}")
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


def _create(name, pretrained=False, features_only=False, out_indices=None, num_classes=1000, in_chans=3,
            drop_rate=0., pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **backbone_kwargs):
    if pretrained:
        raise ValueError(
            f'{name}: timm hosts no weights for the SLAB models. Convert the authors\' ImageNet checkpoint with '
            f'tools/convert_checkpoint.py and load it with checkpoint_path=... (features_only=True) or '
            f"backbone init_cfg=dict(type='Pretrained', checkpoint=...)")
    cls, defaults = TIMM_VARIANTS[name]
    cfg = dict(defaults, in_channels=in_chans, **backbone_kwargs)
    if features_only:
        if out_indices is not None:
            cfg['out_indices'] = tuple(out_indices)
        backbone = cls(**cfg)
        backbone.init_weights()
        backbone.feature_info = _feature_info(backbone)
        backbone.pretrained_cfg = dict(IMAGENET_CFG, num_classes=0)
        return backbone
    if out_indices is not None:
        raise ValueError(f'{name}: out_indices only applies with features_only=True')
    # The classifier pools the last stage: the only output it needs.
    cfg.setdefault('out_indices', (len(cls.arch_zoo[cfg['arch']]['depths']) - 1,))
    backbone = cls(**cfg)
    backbone.init_weights()
    return SLABImageClassifier(backbone, num_classes, drop_rate)


def _entrypoint(name):
    def create(pretrained=False, **kwargs):
        return _create(name, pretrained, **kwargs)
    create.__name__ = create.__qualname__ = name
    create.__module__ = __name__
    create.__doc__ = f'{name}: {TIMM_VARIANTS[name][0].__name__}({TIMM_VARIANTS[name][1]}) for timm.create_model.'
    return register_model(create)


for _name in TIMM_VARIANTS:
    globals()[_name] = _entrypoint(_name)
