"""The PVTv2 peers: a PVT config with its backbone replaced builds mmdet's PVTv2 with the
PVT neck's channels; a bad variant is refused by name."""
import pytest
import torch
from mmengine.config import Config

from slab_mmdet.benchmark.peers import pvtv2_options
from testing_utils import REPO_ROOT


@pytest.mark.parametrize('variant, depths', [('b1', [2, 2, 2, 2]), ('b2', [3, 4, 6, 3])])
def test_pvtv2_replaces_the_backbone_of_a_pvt_config(variant, depths):
    from mmdet.registry import MODELS
    cfg = Config.fromfile(f'{REPO_ROOT}/configs/mini/mask_rcnn_pvt_t.py')
    cfg.merge_from_dict(pvtv2_options(variant))
    assert dict(cfg.model.backbone) == dict(type='PyramidVisionTransformerV2', embed_dims=64, num_layers=depths,
                                            init_cfg=None)
    backbone = MODELS.build(cfg.model.backbone)
    outs = backbone(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == list(cfg.model.neck.in_channels)


def test_unknown_pvtv2_variant_is_refused():
    with pytest.raises(ValueError, match=r"PVTv2 variant 'b9': expected one of \['b1', 'b2'\]"):
        pvtv2_options('b9')


def test_loading_a_peer_leaves_the_shared_options_untouched():
    """mmengine's merge_from_dict writes a dotted key ('model.backbone') into the nested
    dict of a plain key ('model') it was given; load_config merges a copy, so the shared
    FIXED_DETECTIONS does not turn every later model into PVTv2."""
    import copy
    from slab_mmdet.benchmark import FIXED_DETECTIONS, load_config
    before = copy.deepcopy(FIXED_DETECTIONS)
    peer = load_config(f'{REPO_ROOT}/configs/mini/mask_rcnn_pvt_t.py', {**FIXED_DETECTIONS, **pvtv2_options('b1')})
    assert peer.model.backbone.type == 'PyramidVisionTransformerV2'
    assert peer.model.test_cfg.rcnn.score_thr == 0.0
    assert FIXED_DETECTIONS == before
    swin = load_config(f'{REPO_ROOT}/configs/mini/mask_rcnn_swin_t.py', FIXED_DETECTIONS)
    assert swin.model.backbone.type.endswith('SwinTransformer')
