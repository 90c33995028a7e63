"""The detectors a benchmark compares (slab_mmdet.benchmark.candidates): names, checkpoints
in config order, random PRepBN weights in the trained state, and the fusion plumbing with a
stand-in ``fused_copy``."""
import sys
import types

import pytest
import torch

from slab_mmdet.benchmark import BenchmarkError, load_models
from slab_mmdet.benchmark.candidates import unique_names
from slab_mmdet.benchmark.images import list_mini_coco_val
from slab_mmdet.models.layers import FusionError
from testing_utils.benchmark_utils import MASK_RCNN


def test_unique_names_disambiguate_equal_stems():
    assert unique_names(['a/x.py', 'b/x.py', 'mmdet::r/y.py']) == ['a/x', 'b/x', 'y']
    assert unique_names(['a/x.py', 'a/x.py']) == ['a/x', 'a/x #2']

def test_checkpoints_go_to_the_configs_in_order(tmp_path):
    reference = load_models([MASK_RCNN], log=None)[0].model
    with torch.no_grad():
        for p in reference.parameters():
            p.fill_(0.25)
    ckpt = str(tmp_path / 'weights.pth')
    torch.save({'state_dict': reference.state_dict()}, ckpt)
    with_ckpt, without = load_models([MASK_RCNN, MASK_RCNN], [ckpt], log=None)
    assert (with_ckpt.checkpoint, without.checkpoint) == (ckpt, None)
    assert [m.name for m in (with_ckpt, without)] == ['mini/mask_rcnn_pvt_t', 'mini/mask_rcnn_pvt_t #2']
    assert all(bool((p == 0.25).all()) for p in with_ckpt.model.parameters())
    assert not all(bool((p == 0.25).all()) for p in without.model.parameters())

def test_random_prepbn_models_are_timed_as_trained_ones_finish(mini_coco):
    """Without a checkpoint, every PRepBN is at g = 0 (not a LayerNorm model) with RepBN's
    alpha = 0, so that random activations stay finite and the heads keep as many
    detections as the LayerNorm baseline (they would keep none after an overflow)."""
    from slab_mmdet.models.layers import iter_prepbn
    keep_all = dict(model=dict(test_cfg=dict(rpn=dict(nms_pre=100, max_per_img=50),
                                             rcnn=dict(score_thr=0.0, max_per_img=20))))
    slab, baseline = load_models(['configs/mini/mask_rcnn_slab_pvt_t.py', MASK_RCNN], cfg_options=keep_all, log=None)
    layers = [m for _, m in iter_prepbn(slab.model)]
    assert len(layers) == 24
    assert all(m.g_value == 0.0 and float(m.repbn.alpha) == 0.0 for m in layers)
    image = list_mini_coco_val(mini_coco)[0]
    for bench_model in (slab, baseline):
        data = bench_model.prepare(image)
        with torch.inference_mode():
            feats = bench_model.model.extract_feat(data['inputs'])
            dets = bench_model.model(**data, mode='predict')[0].pred_instances
        assert all(torch.isfinite(f).all() for f in feats)
        assert len(dets) == 20

def test_fuse_without_deploy_module_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, 'slab_mmdet.deploy', None)   # makes the import fail
    with pytest.raises(BenchmarkError, match='--fuse needs slab_mmdet.deploy.fused_copy'):
        load_models([MASK_RCNN], fuse='yes', log=None)

def test_fuse_both_keeps_a_model_that_cannot_be_fused_unfused_and_says_so(monkeypatch):
    def refuse(model):
        raise FusionError('backbone has LayerNorm, nothing to fold')   # what fused_copy raises
    monkeypatch.setitem(sys.modules, 'slab_mmdet.deploy', types.SimpleNamespace(fused_copy=refuse))
    messages = []
    models = load_models([MASK_RCNN], fuse='both', log=messages.append)
    assert [(m.name, m.fused) for m in models] == [('mask_rcnn_pvt_t', False)]
    assert any('not fused (backbone has LayerNorm, nothing to fold); with --fuse both it is measured unfused only'
               in m for m in messages)

def test_fuse_both_still_stops_when_the_fusion_misbehaves(monkeypatch):
    """Only a refusal (the model has nothing to fold) is measured unfused; a fusion that
    returns no report is a bug, and stops the run under --fuse both too."""
    monkeypatch.setitem(sys.modules, 'slab_mmdet.deploy',
                        types.SimpleNamespace(fused_copy=lambda model: (model, None)))
    with pytest.raises(BenchmarkError,
                       match="fused_copy returned the report None for .*expected a dict with 'removed_norms'"):
        load_models([MASK_RCNN], fuse='both', log=None)


def test_compile_replaces_backbone_and_neck_of_every_variant(monkeypatch):
    """--compile: each variant's backbone and neck go through torch.compile in the given mode
    (a stand-in here: compiling a Mask R-CNN takes minutes), the heads stay eager, and the
    variant's name and record say so. A mode torch.compile does not offer here is refused."""
    from slab_mmdet.benchmark import candidates
    calls = []

    def fake_compile(module, mode):
        calls.append((type(module).__name__, mode))
        wrapper = torch.nn.Sequential(module)   # a different module standing in for the compiled one
        return wrapper
    monkeypatch.setattr(candidates.torch, 'compile', fake_compile)
    models = load_models([MASK_RCNN], compile_mode='max-autotune-no-cudagraphs', log=None)
    assert calls == [('PyramidVisionTransformer', 'max-autotune-no-cudagraphs'), ('FPN', 'max-autotune-no-cudagraphs')]
    (model,) = models
    assert model.name == 'mask_rcnn_pvt_t (compiled)' and model.compiled == 'max-autotune-no-cudagraphs'
    assert isinstance(model.model.backbone, torch.nn.Sequential) and isinstance(model.model.neck, torch.nn.Sequential)
    assert not isinstance(model.model.roi_head, torch.nn.Sequential)
    with pytest.raises(BenchmarkError, match="compile mode 'reduce-overhead' is not valid; valid: default, "
                                             "max-autotune-no-cudagraphs"):
        load_models([MASK_RCNN], compile_mode='reduce-overhead', log=None)


def test_static_compile_shapes_compile_one_graph_per_size(monkeypatch):
    """compile_shapes='static' asks torch.compile for dynamic=False (one graph per input size),
    and the record says so; an unknown value is refused before any model is built."""
    from slab_mmdet.benchmark import candidates
    calls = []
    monkeypatch.setattr(candidates.torch, 'compile', lambda module, **options: calls.append(options) or module)
    (model,) = load_models([MASK_RCNN], compile_mode='default', compile_shapes='static', log=None)
    assert calls == [dict(mode='default', dynamic=False)] * 2
    assert model.compiled == 'default, static shapes'
    calls.clear()
    load_models([MASK_RCNN], compile_mode='default', log=None)
    assert calls == [dict(mode='default')] * 2   # torch's automatic dynamic shapes
    with pytest.raises(BenchmarkError, match="compile shapes 'symbolic' is not valid; valid: automatic, static"):
        load_models([MASK_RCNN], compile_mode='default', compile_shapes='symbolic', log=None)


def test_coco_test_options_fix_the_detections_and_resize_to_the_coco_test_scale():
    from mmdet.utils import get_test_pipeline_cfg

    from slab_mmdet.benchmark import COCO_TEST_SCALE, FIXED_DETECTIONS, coco_test_options, load_config
    options = coco_test_options(MASK_RCNN)
    cfg = load_config(MASK_RCNN, options)
    resizes = [step for step in get_test_pipeline_cfg(cfg) if step['type'] == 'Resize']
    assert [tuple(step['scale']) for step in resizes] == [COCO_TEST_SCALE]
    assert cfg.model.test_cfg.rcnn.score_thr == 0.0 and cfg.model.test_cfg.rcnn.max_per_img == 100
    assert options['model'] == FIXED_DETECTIONS['model']
