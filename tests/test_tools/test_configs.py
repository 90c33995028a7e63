"""Every Mask R-CNN config in configs/ and configs/mini/: it loads, names the plugin
and the data it is meant for, describes the backbone its file name says, builds with
``mmdet.apis.init_detector`` and detects on a mini-COCO image.

Runners are not built here (test_tools/test_mim.py and the hook's tests train).
"""
import glob
import os.path as osp
import re

import mmcv
import pytest
import torch
from mmdet.apis import inference_detector, init_detector
from mmengine.config import Config
from mmengine.registry import HOOKS

from slab_mmdet.models.backbones import SLABPyramidVisionTransformer, SLABSwinTransformer
from testing_utils.helpers import REPO_ROOT

FULL_CONFIGS = sorted(osp.relpath(p, REPO_ROOT) for p in glob.glob(osp.join(REPO_ROOT, 'configs', '*.py')))
MINI_CONFIGS = sorted(osp.relpath(p, REPO_ROOT) for p in glob.glob(osp.join(REPO_ROOT, 'configs', 'mini', '*.py')))
ALL_CONFIGS = FULL_CONFIGS + MINI_CONFIGS
NAME = re.compile(r'mask_rcnn_(?P<slab>slab_)?(?P<family>pvt|swin)_(?P<size>[tsm])(?P<prepbn>_prepbn)?'
                  r'(?P<frozen_bn>_frozen_bn)?(?P<twin>_twin)?')
# The authors' recipe needs annealed weights with estimated statistics, which a from-scratch
# mini run has not: it has no mini variant.
FROZEN_BN = {c for c in FULL_CONFIGS if c.endswith('_frozen_bn.py')}
ARCHS = {'t': 'tiny', 's': 'small', 'm': 'medium'}
DATA_ROOTS = {True: 'data/mini_coco/', False: 'data/coco/'}
# Small/medium backbones only add depth to what the tiny configs (same bases) already
# exercise, and take longest on a CPU: `-m 'not slow'` skips their detector runs.
SLOW = {'s', 'm'}


def is_mini(config):
    return osp.basename(osp.dirname(config)) == 'mini'


def name_parts(config):
    match = NAME.fullmatch(osp.splitext(osp.basename(config))[0])
    assert match, f'{config}: expected mask_rcnn_[slab_](pvt|swin)_(t|s|m)[_prepbn|_frozen_bn|_twin].py'
    return match.groupdict()


def config_params(configs):
    def slow(config):  # (a badly named config fails the declaration test, not collection)
        match = NAME.fullmatch(osp.splitext(osp.basename(config))[0])
        return bool(match) and match['size'] in SLOW
    return [pytest.param(c, id=c, marks=[pytest.mark.slow] if slow(c) else []) for c in configs]


def test_every_full_config_has_a_mini_variant():
    assert len(FULL_CONFIGS) >= 12
    assert [osp.basename(c) for c in FULL_CONFIGS if c not in FROZEN_BN] == [osp.basename(c) for c in MINI_CONFIGS]
    assert len(FROZEN_BN) == 2   # one per family


@pytest.mark.parametrize('config', ALL_CONFIGS)
def test_config_declares_plugin_data_and_the_backbone_its_name_says(config):
    cfg = Config.fromfile(osp.join(REPO_ROOT, config))
    assert 'slab_mmdet' in cfg.custom_imports['imports']
    assert cfg.custom_imports.get('allow_failed_imports', False) is False

    root = DATA_ROOTS[is_mini(config)]
    for split in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[split].dataset.data_root == root, split
    for split in ('val_evaluator', 'test_evaluator'):
        assert cfg[split].ann_file.startswith(root), split

    parts, backbone = name_parts(config), cfg.model.backbone
    arch = ARCHS[parts['size']]
    if parts['slab'] or parts['prepbn']:
        slab_type = SLABPyramidVisionTransformer if parts['family'] == 'pvt' else SLABSwinTransformer
        assert backbone.type == slab_type.__name__
        assert backbone.arch == arch
        sla = 'LLLL' if parts['family'] == 'pvt' else 'LLSS'
        assert backbone.attn_types == (sla if parts['slab'] else 'SSSS')
        assert backbone.norm_cfg.type == 'PRepBN'
        hooks = [h for h in cfg.custom_hooks if h.type == 'PRepBNHook']
        if parts['frozen_bn']:   # released annealed weights, frozen statistics: nothing anneals
            assert backbone.norm_eval is True and not hooks
            assert backbone.init_cfg.checkpoint.startswith('checkpoints/slab_')
        else:
            assert len(hooks) == 1
            HOOKS.build(hooks[0])  # valid arguments
        assert cfg.find_unused_parameters is True
        channels = slab_type(arch=arch).num_features
    elif parts['twin']:   # the LayerNorm + softmax twins: this code's backbone, no PRepBN
        slab_type = SLABPyramidVisionTransformer if parts['family'] == 'pvt' else SLABSwinTransformer
        assert backbone.type == slab_type.__name__ and backbone.arch == arch
        assert backbone.attn_types == 'SSSS' and backbone.norm_cfg.type == 'LN'
        if parts['family'] == 'swin':
            assert tuple(backbone.window_sizes) == (7, 7, 7, 7)
        assert 'PRepBNHook' not in [h.type for h in cfg.get('custom_hooks', [])]
        channels = slab_type(arch=arch).num_features
    else:  # the LayerNorm baselines: mmdet's own backbones, no PRepBN
        if parts['family'] == 'pvt':
            assert backbone.type == 'PyramidVisionTransformer'
            assert list(backbone.num_layers) == list(SLABPyramidVisionTransformer.arch_zoo[arch]['depths'])
        else:
            assert backbone.type == 'SwinTransformer'
            assert list(backbone.depths) == list(SLABSwinTransformer.arch_zoo[arch]['depths'])
        assert 'PRepBNHook' not in [h.type for h in cfg.get('custom_hooks', [])]
        channels = [64, 128, 320, 512] if parts['family'] == 'pvt' else [96, 192, 384, 768]
    assert list(cfg.model.neck.in_channels) == list(channels)
    num_classes = 6 if is_mini(config) else 80
    assert cfg.model.roi_head.bbox_head.num_classes == num_classes
    assert cfg.model.roi_head.mask_head.num_classes == num_classes


@pytest.mark.parametrize('config', config_params(ALL_CONFIGS))
def test_config_builds_a_detector_that_detects(config, mini_coco):
    cfg = Config.fromfile(osp.join(REPO_ROOT, config))
    for t in cfg.test_dataloader.dataset.pipeline:
        if t.type == 'Resize':
            t.scale = (320, 256)  # small images: seconds per config on a CPU
    # Untrained heads score every class about equally: keep a few detections anyway.
    cfg.model.test_cfg.rcnn.score_thr = 0.0
    cfg.model.test_cfg.rcnn.max_per_img = 10
    torch.manual_seed(0)
    model = init_detector(cfg, None, device='cpu')

    image = sorted(glob.glob(osp.join(mini_coco, 'val', '*')))[0]
    height, width = mmcv.imread(image).shape[:2]
    result = inference_detector(model, image)
    assert tuple(result.metainfo['ori_shape']) == (height, width)
    pred = result.pred_instances
    n = len(pred)
    assert 0 < n <= 10
    assert pred.bboxes.shape == (n, 4) and torch.isfinite(pred.bboxes).all()
    assert (pred.bboxes[:, :2] >= 0).all() and (pred.bboxes[:, 2:] >= pred.bboxes[:, :2]).all()
    assert (pred.bboxes[:, 2] <= width).all() and (pred.bboxes[:, 3] <= height).all()
    assert pred.scores.shape == (n,) and ((pred.scores >= 0) & (pred.scores <= 1)).all()
    num_classes = cfg.model.roi_head.bbox_head.num_classes
    assert pred.labels.shape == (n,) and ((pred.labels >= 0) & (pred.labels < num_classes)).all()
    assert pred.masks.shape == (n, height, width) and pred.masks.dtype == torch.bool
