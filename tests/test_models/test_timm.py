"""timm.create_model builds the SLAB backbones from the very modules mmdet uses."""
import pytest
import timm
import torch
from mmdet.registry import MODELS

import slab_mmdet  # noqa: F401  (registers the timm names)
from slab_mmdet.models.timm_models import TIMM_VARIANTS

NAMES = sorted(TIMM_VARIANTS)


def test_every_slab_model_is_registered():
    assert set(timm.list_models('slab_*')) | set(timm.list_models('*_prepbn')) == set(NAMES)


@pytest.mark.parametrize('name', NAMES)
def test_features_only_is_the_mmdet_backbone(name):
    model = timm.create_model(name, features_only=True)
    cls, defaults = TIMM_VARIANTS[name]
    assert type(model) is MODELS.get(cls.__name__)   # no second implementation
    mmdet_backbone = MODELS.build(dict(type=cls.__name__, **defaults))
    assert model.state_dict().keys() == mmdet_backbone.state_dict().keys()
    channels = model.feature_info.channels()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        outs = model.eval()(torch.randn(1, 3, 64, 96))
    assert [o.shape[1] for o in outs] == channels
    assert [tuple(o.shape[2:]) for o in outs] == [(16, 24), (8, 12), (4, 6), (2, 3)]


def test_features_only_out_indices_and_kwargs():
    model = timm.create_model('slab_pvt_tiny', features_only=True, out_indices=(1, 3), drop_path_rate=0.2)
    assert model.feature_info.channels() == [128, 512] and model.feature_info.reduction() == [8, 32]
    assert len(model(torch.randn(1, 3, 64, 64))) == 2
    with pytest.raises(TypeError):
        timm.create_model('slab_pvt_tiny', features_only=True, no_such_option=1)


def test_classifier_head_and_errors():
    model = timm.create_model('slab_swin_tiny', num_classes=7)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    assert model.forward_head(model.forward_features(torch.randn(1, 3, 64, 64)), pre_logits=True).shape == (1, 768)
    model.reset_classifier(3)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    with pytest.raises(ValueError, match='hosts no weights'):
        timm.create_model('slab_pvt_small', pretrained=True)
    with pytest.raises(ValueError, match='features_only'):
        timm.create_model('slab_pvt_small', out_indices=(0,))
