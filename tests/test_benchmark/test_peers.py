"""The PVTv2 peers: a PVT config with its backbone replaced builds mmdet's PVTv2, or timm's
(TimmPeerBackbone), with the PVT neck's channels; a bad variant is refused by name."""
import pytest
import torch
from mmengine.config import Config

from slab_mmdet.benchmark.peers import TIMM_PEER_BACKBONES, TimmPeerBackbone, pvtv2_options
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


@pytest.mark.parametrize('name, depths', [('pvt_v2_b1', [2, 2, 2, 2]), ('pvt_v2_b2', [3, 4, 6, 3])])
def test_timms_pvtv2_replaces_the_backbone_of_a_pvt_config(name, depths):
    """timm's PVTv2 (SDPA attention) as an mmdet backbone: the four stage maps at strides
    4-32 with the PVT neck's channels, and timm's own depths."""
    from mmdet.registry import MODELS
    cfg = Config.fromfile(f'{REPO_ROOT}/configs/mini/mask_rcnn_pvt_t.py')
    cfg.merge_from_dict({'model.backbone': dict(_delete_=True, **TIMM_PEER_BACKBONES[name])})
    backbone = MODELS.build(cfg.model.backbone)
    assert [len(getattr(backbone.model, f"stages_{i}").blocks) for i in range(4)] == depths
    outs = backbone(torch.randn(1, 3, 64, 96))
    assert [o.shape for o in outs] == [(1, c, 64 // s, 96 // s) for c, s in
                                       zip(cfg.model.neck.in_channels, (4, 8, 16, 32))]
    assert backbone.num_features == tuple(cfg.model.neck.in_channels)


def test_unknown_timm_peer_is_refused():
    with pytest.raises(ValueError, match=r"model_name 'resnet50' is not a timed peer; expected one of "
                                         r"pvt_v2_b1, pvt_v2_b2"):
        TimmPeerBackbone('resnet50')


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


def test_resized_test_pipeline_sets_the_resize_bound_from_a_path_or_a_loaded_config():
    from slab_mmdet.benchmark import load_config, resized_test_pipeline_options
    from mmdet.utils import get_test_pipeline_cfg
    path = f'{REPO_ROOT}/configs/mask_rcnn_swin_t.py'
    for config in (path, load_config(path)):
        cfg = load_config(path, resized_test_pipeline_options(config, (853, 512)))
        resizes = [step for step in get_test_pipeline_cfg(cfg) if step['type'] == 'Resize']
        assert [tuple(step['scale']) for step in resizes] == [(853, 512)]
    assert tuple(next(s for s in get_test_pipeline_cfg(load_config(path)) if s['type'] == 'Resize')['scale']) \
        == (1333, 800)  # the options are a copy: the config file's pipeline is untouched


def test_resizing_a_pipeline_without_exactly_one_resize_is_refused():
    from slab_mmdet.benchmark import BenchmarkError, load_config, resized_test_pipeline_options
    from mmdet.utils import get_test_pipeline_cfg
    cfg = load_config(f'{REPO_ROOT}/configs/mask_rcnn_swin_t.py')
    pipeline = get_test_pipeline_cfg(cfg)
    pipeline.insert(1, dict(pipeline[1]))
    with pytest.raises(BenchmarkError, match=r'mask_rcnn_swin_t\.py: its test pipeline has 2 Resize steps; '
                                             r'resizing to 853x512 needs exactly one'):
        resized_test_pipeline_options(cfg, (853, 512))
