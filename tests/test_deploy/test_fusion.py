"""Fusing a whole detector (fuse_detector, deploy_config, tools/fuse_norms.py and mmdet's tools on
the result): features and detections unchanged, in float64 where exactness is claimed.

The fold maths are tested in tests/test_models/test_fusion_maths.py and the backbones'
switch_to_deploy in tests/test_models/test_switch_to_deploy.py.
"""
import copy
import os.path as osp

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config

from slab_mmdet.deploy import deploy_config, fuse_detector
from slab_mmdet.models.layers.norms import NORM_LAYER_TYPES
from slab_mmdet.models.layers import ChannelAffine
from testing_utils.helpers import (REPO_ROOT, anneal_and_randomise_norms, annealed_mask_rcnn, float64_detection_ops,
                                   run_python)


pytestmark = pytest.mark.usefixtures('quiet_mmengine_logger')


def max_rel_diff(a, b):
    return max(float((x - y).abs().max() / x.abs().max()) for x, y in zip(a, b))


# ------------------------------------------------------------------ whole detector


def predict(model, x):
    from mmdet.structures import DetDataSample
    hw = tuple(x.shape[-2:])
    sample = DetDataSample(metainfo=dict(img_shape=hw, ori_shape=hw, scale_factor=(1.0, 1.0),
                                         batch_input_shape=hw, pad_shape=hw))
    with torch.no_grad():
        return model.predict(x, [sample])[0].pred_instances


@pytest.mark.slow
@pytest.mark.parametrize('config', ['configs/mini/mask_rcnn_slab_pvt_t.py', 'configs/mini/mask_rcnn_slab_swin_t.py'])
def test_fused_mask_rcnn_gives_the_same_features_and_detections(config):
    model = annealed_mask_rcnn(config).double()
    fused = copy.deepcopy(model)
    report = fuse_detector(fused)
    assert report['out_norms_folded'] and report['removed_norms'] > 20
    assert not any(isinstance(m, NORM_LAYER_TYPES + (ChannelAffine,)) for m in fused.backbone.modules())
    with float64_detection_ops():
        for hw in [(224, 288), (200, 328)]:   # (200, 328): every Swin stage pads
            x = torch.randn(1, 3, *hw, dtype=torch.float64)
            with torch.no_grad():
                assert max_rel_diff(model.extract_feat(x), fused.extract_feat(x)) < 1e-10
            a, b = predict(model, x), predict(fused, x)
            assert len(a) == len(b) > 0
            torch.testing.assert_close(b.bboxes, a.bboxes, rtol=1e-8, atol=1e-8)
            torch.testing.assert_close(b.scores, a.scores, rtol=1e-8, atol=1e-10)
            assert torch.equal(a.labels, b.labels) and torch.equal(a.masks, b.masks)


def test_output_norms_stay_an_affine_when_the_neck_reads_backbone_outputs_elsewhere():
    cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs/mini/mask_rcnn_slab_pvt_t.py'))
    cfg.model.neck.add_extra_convs = 'on_input'   # the last output also feeds the extra conv
    from mmdet.apis import init_detector
    torch.manual_seed(0)
    model = anneal_and_randomise_norms(init_detector(cfg, None, device='cpu')).double().eval()
    fused = copy.deepcopy(model)
    report = fuse_detector(fused)
    assert not report['out_norms_folded'] and report['output_norms'] == 'kept as ChannelAffine'
    x = torch.randn(1, 3, 96, 128, dtype=torch.float64)
    with torch.no_grad():
        assert max_rel_diff(model.extract_feat(x), fused.extract_feat(x)) < 1e-10
    deployed = init_detector(deploy_config(cfg, False), None, device='cpu')
    deployed.load_state_dict(fused.state_dict(), strict=True)


def test_layernorm_output_norms_stay_and_the_rest_folds_exactly():
    """The authors' detection recipe (norm_eval=True, LayerNorm output norms): fusion folds
    every norm of the body, keeps the output LayerNorms, says so, and stays exact."""
    cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs/mini/mask_rcnn_slab_pvt_t.py'))
    cfg.model.backbone.norm_eval = True
    from mmdet.apis import init_detector
    torch.manual_seed(0)
    model = anneal_and_randomise_norms(init_detector(cfg, None, device='cpu')).double().eval()
    assert all(type(getattr(model.backbone, f'norm{i}')) is nn.LayerNorm for i in range(4))
    fused = copy.deepcopy(model)
    report = fuse_detector(fused)
    assert report['kept_norms'] == 4 and report['removed_norms'] == 20   # 8 blocks x 2 + 4 patch embeddings
    assert report['output_norms'] == 'kept as LN (out_norm_cfg; not foldable)' and not report['out_norms_folded']
    kept = [n for n, m in fused.backbone.named_modules() if isinstance(m, NORM_LAYER_TYPES)]
    assert kept == ['norm0', 'norm1', 'norm2', 'norm3']
    x = torch.randn(1, 3, 96, 128, dtype=torch.float64)
    with torch.no_grad():
        assert max_rel_diff(model.extract_feat(x), fused.extract_feat(x)) < 1e-10
    deployed = init_detector(deploy_config(cfg, report['out_norms_folded']), None, device='cpu')
    deployed.load_state_dict(fused.state_dict(), strict=True)


def test_deploy_config_drops_the_hook_and_pretrained_init():
    cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs/mask_rcnn_slab_pvt_s.py'))
    out = deploy_config(cfg, True)
    assert out.model.backbone.deploy and out.model.backbone.out_norms_folded
    assert out.model.backbone.init_cfg is None
    assert not any(h['type'] == 'PRepBNHook' for h in out.custom_hooks)
    assert cfg.model.backbone.get('deploy', False) is False   # the input is not modified


# --------------------------------------------------------- the tool and mmdet's tools


@pytest.fixture(scope='module')
def trained_like_checkpoint(tmp_path_factory):
    """A mini SLAB-PVT-T checkpoint as training would leave it: g = 0, real BN statistics."""
    model = annealed_mask_rcnn('configs/mini/mask_rcnn_slab_pvt_t.py', seed=1)
    path = tmp_path_factory.mktemp('ckpt') / 'epoch_12.pth'
    from slab_mmdet.datasets import MINI_COCO_CLASSES, MINI_COCO_PALETTE
    torch.save(dict(state_dict=model.state_dict(),
                    meta=dict(dataset_meta=dict(classes=MINI_COCO_CLASSES, palette=MINI_COCO_PALETTE))), path)
    return str(path)


@pytest.mark.slow
def test_fuse_norms_tool_then_mmdet_test_and_inferencer(trained_like_checkpoint, mini_coco, tmp_path):
    from mmdet.apis import DetInferencer
    data = [f'{s}.dataset.data_root={mini_coco}/' for s in ('train_dataloader', 'val_dataloader',
                                                             'test_dataloader')]
    out_dir = tmp_path / 'deploy'
    proc = run_python(['tools/fuse_norms.py', 'configs/mini/mask_rcnn_slab_pvt_t.py', trained_like_checkpoint,
                       '--out-dir', str(out_dir), '--cfg-options'] + data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    removed = int(proc.stdout.split('norm layers removed: ')[1].split()[0])
    assert removed == 24   # 2+2+2+2 blocks x 2 norms, 4 patch embeddings, 4 output norms
    largest = float(proc.stdout.split('largest difference: features ')[1].split()[0])
    assert largest < 1e-4
    deploy_cfg = out_dir / 'mask_rcnn_slab_pvt_t_deploy.py'
    fused_ckpt = out_dir / 'epoch_12_fused.pth'
    assert Config.fromfile(str(deploy_cfg)).model.backbone.deploy is True

    # mmdet's own test tool runs the fused model with no special code path.
    test_py = osp.join(osp.dirname(__import__('mmdet').__file__), '.mim', 'tools', 'test.py')
    proc = run_python([test_py, str(deploy_cfg), str(fused_ckpt), '--work-dir', str(tmp_path / 'test'),
                       '--cfg-options', f'test_dataloader.dataset.data_root={mini_coco}/',
                       f'test_evaluator.ann_file={mini_coco}/annotations/instances_val.json',
                       'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False'])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'coco/bbox_mAP' in proc.stdout + proc.stderr

    inferencer = DetInferencer(model=str(deploy_cfg), weights=str(fused_ckpt), device='cpu', show_progress=False)
    result = inferencer(osp.join(mini_coco, 'val', '000000000001.jpg'), return_datasamples=True)
    assert len(result['predictions'][0].pred_instances) > 0


@pytest.mark.parametrize('scale, refused', [(1.0, False), (1.01, True)])
def test_fuse_checkpoint_refuses_a_fused_model_whose_features_differ(trained_like_checkpoint, mini_coco, tmp_path,
                                                                     monkeypatch, scale, refused):
    """The features' check (1e-4, relative) is what catches a wrong fusion, whatever the looser
    detections' check says: a fused copy whose first patch embedding is 1 % off is refused."""
    from slab_mmdet.deploy import fuse
    make_copy = fuse.fused_copy

    def off_copy(model):
        fused, report = make_copy(model)
        with torch.no_grad():
            fused.backbone.stages[0].patch_embed.proj.weight.mul_(scale)
        return fused, report
    monkeypatch.setattr(fuse, 'fused_copy', off_copy)
    options = {f'{s}.dataset.data_root': f'{mini_coco}/' for s in ('train_dataloader', 'val_dataloader',
                                                                  'test_dataloader')}
    check = lambda: fuse.fuse_checkpoint('configs/mini/mask_rcnn_slab_pvt_t.py', trained_like_checkpoint,
                                         str(tmp_path / 'out'), cfg_options=options, logger=lambda *a: None)
    if refused:
        with pytest.raises(ValueError, match=r'not equivalent within 0.0001 \(features\)') as e:
            check()
        assert float(str(e.value).split("'features': ")[1].split(',')[0]) > 1e-4
        assert not (tmp_path / 'out').exists()
    else:
        assert check()['diff']['features'] < 1e-4


def test_fuse_norms_tool_refuses_a_model_still_annealing(tmp_path, mini_coco):
    model = annealed_mask_rcnn('configs/mini/mask_rcnn_slab_pvt_t.py')
    model.backbone.stages[0].blocks[0].norm1.set_g(0.5)
    ckpt = tmp_path / 'annealing.pth'
    torch.save(dict(state_dict=model.state_dict()), ckpt)
    proc = run_python(['tools/fuse_norms.py', 'configs/mini/mask_rcnn_slab_pvt_t.py', str(ckpt), '--out-dir',
                       str(tmp_path / 'out'), '--image', osp.join(mini_coco, 'val', '000000000001.jpg')])
    assert proc.returncode != 0
    assert 'stages.0.blocks.0.norm1 is a PRepBN with g = 0.5' in proc.stderr
    assert not (tmp_path / 'out').exists()


def test_fuse_norms_tool_refuses_another_configs_checkpoint_a_bad_out_dir_and_tolerance(tmp_path, mini_coco):
    image = osp.join(mini_coco, 'val', '000000000001.jpg')
    ckpt = tmp_path / 'swin.pth'
    torch.save(dict(state_dict=annealed_mask_rcnn('configs/mini/mask_rcnn_slab_swin_t.py').state_dict()), ckpt)
    proc = run_python(['tools/fuse_norms.py', 'configs/mini/mask_rcnn_slab_pvt_t.py', str(ckpt), '--out-dir',
                       str(tmp_path / 'out'), '--image', image])
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr
    assert 'fuse_norms: ' in proc.stderr and 'does not fit the model of configs/mini/mask_rcnn_slab_pvt_t.py' in \
        proc.stderr
    not_a_dir = tmp_path / 'file'
    not_a_dir.write_text('x')
    proc = run_python(['tools/fuse_norms.py', 'configs/mini/mask_rcnn_slab_pvt_t.py', str(ckpt), '--out-dir',
                       str(not_a_dir), '--image', image])
    assert proc.returncode != 0 and f'--out-dir {not_a_dir} exists and is not a directory' in proc.stderr
    proc = run_python(['tools/fuse_norms.py', 'configs/mini/mask_rcnn_slab_pvt_t.py', str(ckpt), '--out-dir',
                       str(tmp_path / 'out'), '--detection-tolerance', '0'])
    assert proc.returncode != 0 and 'fuse_norms: --detection-tolerance must be > 0, got 0.0' in proc.stderr


def _instances(boxes, scores, labels):
    from mmengine.structures import InstanceData
    masks = torch.zeros(len(boxes), 20, 30, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        masks[i, int(y0):int(y1), int(x0):int(x1)] = True
    return InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32), scores=torch.tensor(scores),
                        labels=torch.tensor(labels), masks=masks)


def test_detection_check_ignores_the_order_of_tied_scores():
    """An untrained model ties scores by the dozen; float-level differences then reorder
    them, and at the max_per_img cut-off keep one or the other. Neither is a difference."""
    from slab_mmdet.deploy import compare_detections, detections_equivalent
    boxes = [[0, 0, 10, 10], [5, 5, 15, 15], [10, 2, 20, 12], [1, 8, 9, 18]]
    a = _instances(boxes, [0.9, 0.5, 0.5, 0.2], [1, 2, 3, 0])
    reordered = _instances([boxes[0], boxes[2], boxes[1], boxes[3]], [0.9, 0.5 + 1e-7, 0.5, 0.2], [1, 3, 2, 0])
    diff = compare_detections(a, reordered, (20, 30))
    assert diff['labels_equal'] and diff['boxes'] == 0.0 and diff['masks'] == 0.0 and diff['scores'] < 1e-6
    assert detections_equivalent(diff, 1e-4)
    # Tied at the lowest kept score: the other model kept another detection of that score.
    cut = _instances(boxes[:3] + [[20, 10, 28, 19]], [0.9, 0.5, 0.5, 0.2], [1, 2, 3, 5])
    assert detections_equivalent(compare_detections(a, cut, (20, 30)), 1e-4)
    # Real differences are still caught: a moved box, a changed label above the cut-off.
    moved = _instances([boxes[0], [5, 5, 17, 15]] + boxes[2:], [0.9, 0.5, 0.5, 0.2], [1, 2, 3, 0])
    assert not detections_equivalent(compare_detections(a, moved, (20, 30)), 1e-4)
    relabelled = _instances(boxes, [0.9, 0.5, 0.5, 0.2], [4, 2, 3, 0])
    diff = compare_detections(a, relabelled, (20, 30))
    assert not diff['labels_equal'] and not detections_equivalent(diff, 1e-4)
