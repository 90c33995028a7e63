"""The whole detector in ONNX Runtime (export_onnx.py --detector, test_onnx.py): the same
detections as PyTorch eager (mmdet's predict) image by image for SLAB-PVT-T, SLAB-Swin-T and
the LayerNorm baselines, the same mAP for a briefly trained SLAB-PVT-T, and clear errors."""
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch

from slab_mmdet import apis
from slab_mmdet.deploy.export import ExportCheckFailed, export_checked
from slab_mmdet.deploy.equivalence import compare_detections
from slab_mmdet.deploy.onnx_detector import NotADetectorGraph, OnnxDetector, to_instances
from slab_mmdet.models.layers import FusionError
from testing_utils.helpers import annealed_mask_rcnn, light_two_stage, mini_config, run_python

pytestmark = pytest.mark.usefixtures('quiet_mmengine_logger')
SLAB_PVT = 'configs/mini/mask_rcnn_slab_pvt_t.py'
# Random weights: the heads keep 100 detections whatever their scores, so every image has work.
KEEP_100 = {'model.test_cfg.rcnn.score_thr': 0.0}


def checkpoint_of(config, path, seed=0):
    """A checkpoint of ``config``'s detector with mmdet's initialisation (SLAB: every PRepBN at
    g = 0 with random statistics, ready to fuse)."""
    model = annealed_mask_rcnn(config, seed)
    torch.save({'state_dict': model.state_dict()}, path)
    return str(path)


def data_options(mini_coco):
    return {'test_dataloader.dataset.data_root': mini_coco + '/', **KEEP_100}


def same_detections_as_eager(config, checkpoint, onnx_path, mini_coco, num_images=2):
    """Per image: ONNX Runtime's detections (mapped back, masks pasted) against mmdet's
    ``model.predict`` in PyTorch eager, through the config's test pipeline."""
    from slab_mmdet.deploy import deployable_detector
    model, _, _ = deployable_detector(config, checkpoint, data_options(mini_coco), logger=None)
    runner = OnnxDetector(onnx_path)
    pipeline = apis.inference_pipeline(model.cfg)
    images = sorted(osp.join(mini_coco, 'val', f) for f in os.listdir(osp.join(mini_coco, 'val')))
    diffs = []
    for image in images[:num_images]:
        data = apis.detector_inputs(model, pipeline, image)
        meta = data['data_samples'][0].metainfo
        with torch.no_grad():
            want = model.predict(data['inputs'], data['data_samples'], rescale=True)[0].pred_instances
        got = to_instances(runner.run(data['inputs'].numpy(), meta['img_shape']), meta['scale_factor'],
                           meta['ori_shape'], runner.mask_thr_binary)
        diff = compare_detections(want, got, meta['ori_shape'][:2], score_tolerance=1e-4)
        assert diff['count'][0] == diff['count'][1] == 100, diff
        assert diff['labels_equal'] and diff['boxes'] <= 1e-3, diff   # within 1e-3 of the image size
        assert diff['scores'] <= 1e-4 and diff['masks'] <= 0.01, diff
        diffs.append(diff)
    return diffs


@pytest.mark.slow
@pytest.mark.parametrize('config', [SLAB_PVT, 'configs/mini/mask_rcnn_slab_swin_t.py',
                                    'configs/mini/mask_rcnn_pvt_t_twin.py', 'configs/mini/mask_rcnn_swin_t.py'])
def test_onnx_runtime_gives_the_eager_detections(config, mini_coco, tmp_path):
    checkpoint = checkpoint_of(config, tmp_path / 'model.pth')
    out = str(tmp_path / 'detector.onnx')
    result = export_checked(config, checkpoint, out, detector=True, input_hw=(256, 320), check_sizes=[],
                            cfg_options=data_options(mini_coco), logger=None)
    assert result['outputs'] == ['boxes', 'scores', 'labels', 'masks']
    # Checked on the config's first test image (a 320x240 mini COCO image: 192x320 in) and at the export size.
    assert set(result['diffs']) == {(192, 320), (256, 320)}
    if 'slab' in config:
        assert result['kept_norms'] == []   # fused: no norm left
    else:
        assert result['kept_norms']          # a LayerNorm baseline keeps its norms
    same_detections_as_eager(config, checkpoint, out, mini_coco)


@pytest.mark.slow
def test_mmdets_pvt_exports_at_a_fixed_size_only(mini_coco, tmp_path):
    """mmdet's PyramidVisionTransformer traces nn.MultiheadAttention with the example's token
    counts: the dynamic export is refused (and nothing is left), the static one works."""
    config = 'configs/mini/mask_rcnn_pvt_t.py'
    checkpoint = checkpoint_of(config, tmp_path / 'model.pth')
    out = tmp_path / 'detector.onnx'
    with pytest.raises(ExportCheckFailed, match=r'does not run at every size .* export it with --static'):
        export_checked(config, checkpoint, str(out), detector=True, input_hw=(256, 320), check_sizes=[(192, 256)],
                       cfg_options=KEEP_100, logger=None)
    assert not out.exists() and not list(tmp_path.glob('*.onnx*'))
    export_checked(config, checkpoint, str(out), detector=True, input_hw=(256, 320), static=True,
                   cfg_options=KEEP_100, logger=None)
    runner = OnnxDetector(str(out))
    assert runner.static_input_hw == (256, 320)
    with pytest.raises(ValueError, match=r'fixed input size 256x320, got 192x256; export it without --static'):
        runner.run(np.zeros((1, 3, 192, 256), np.float32), (192, 256))


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """A fused SLAB-PVT-T detector graph (random weights) and its checkpoint."""
    root = tmp_path_factory.mktemp('detector_onnx')
    checkpoint = checkpoint_of(SLAB_PVT, root / 'model.pth')
    out = str(root / 'detector.onnx')
    export_checked(SLAB_PVT, checkpoint, out, detector=True, input_hw=(256, 320), cfg_options=KEEP_100,
                   logger=None)
    return root, checkpoint, out


@pytest.mark.slow
def test_the_graph_refuses_inputs_it_cannot_take(exported):
    _, _, out = exported
    runner = OnnxDetector(out)
    meta = runner.session.get_modelmeta().custom_metadata_map
    assert json.loads(meta['slab_mmdet.outputs']) == ['boxes', 'scores', 'labels', 'masks']
    cases = [
        (np.zeros((1, 4, 256, 320), np.float32), (256, 320), r'must have 3 channels .*got 4'),
        (np.zeros((3, 256, 320), np.float32), (256, 320), r'must be a \(1, 3, H, W\) float32 array'),
        (np.zeros((1, 3, 16, 320), np.float32), (16, 320), r"16x320, below the backbone's minimum of 32x32"),
        (np.zeros((1, 3, 256, 320), np.float32), (300, 320), r'image_shape 300x320 .* must fit in the 256x320 input'),
    ]
    for images, shape, message in cases:
        with pytest.raises(ValueError, match=message):
            runner.run(images, shape)


@pytest.mark.slow
def test_the_evaluation_tool_refuses_a_graph_that_is_not_a_detector(exported, tmp_path, mini_coco):
    root, checkpoint, _ = exported
    features = str(tmp_path / 'features.onnx')
    export_checked(SLAB_PVT, checkpoint, features, input_hw=(256, 320), logger=None)
    with pytest.raises(NotADetectorGraph, match=r"inputs are \['images'\] and its outputs \['feat0', .*--detector"):
        OnnxDetector(features)
    proc = run_python(['tools/test_onnx.py', SLAB_PVT, features])
    assert proc.returncode != 0 and 'is not a whole-detector graph' in proc.stderr and 'Traceback' not in proc.stderr


@pytest.mark.slow
def test_a_model_still_annealing_is_not_exported(tmp_path):
    model = annealed_mask_rcnn(SLAB_PVT)
    next(m for m in model.modules() if hasattr(m, 'set_g')).set_g(0.5)
    path = tmp_path / 'annealing.pth'
    torch.save({'state_dict': model.state_dict()}, path)
    out = tmp_path / 'detector.onnx'
    with pytest.raises(FusionError, match=r'cannot be fused .*g = 0\.5 > 0'):
        export_checked(SLAB_PVT, str(path), str(out), detector=True, input_hw=(256, 320), logger=None)
    assert not out.exists()


@pytest.mark.slow
def test_export_refuses_a_size_below_the_minimum_and_an_output_that_is_a_directory(exported, tmp_path):
    _, checkpoint, _ = exported
    with pytest.raises(ValueError, match=r'height must be an int >= 32, got 16 \(32: the smallest input'):
        export_checked(SLAB_PVT, checkpoint, str(tmp_path / 'd.onnx'), detector=True, input_hw=(16, 320), logger=None)
    directory = tmp_path / 'model.onnx'
    directory.mkdir()
    proc = run_python(['tools/export_onnx.py', SLAB_PVT, checkpoint, '--out', str(directory), '--force'])
    assert proc.returncode != 0 and f'--out {directory} is a directory' in proc.stderr
    assert 'Traceback' not in proc.stderr


MAP_ITERS, MAP_ANNEAL = 80, 40


@pytest.mark.slow
def test_onnx_runtime_gives_the_eager_map_of_a_trained_detector(mini_coco, tmp_path):
    """A short mini COCO training (g annealed to 0 half-way), evaluated on its own training
    images, where it detects: bbox and segm mAP of ONNX Runtime (tools/test_onnx.py) within
    0.005 of PyTorch's (the Runner's test loop, as tools/test.py runs it)."""
    from mmengine.runner import Runner
    cfg = light_two_stage(mini_config(SLAB_PVT, mini_coco, tmp_path / 'run', max_iters=MAP_ITERS, val=False,
                                      img_scale=(256, 192)))
    cfg.custom_hooks = [dict(type='PRepBNHook', anneal_iters=MAP_ANNEAL)]
    cfg.param_scheduler = []
    cfg.optim_wrapper.optimizer.lr = 2e-4
    cfg.model.test_cfg.rcnn.update(score_thr=0.05, max_per_img=100)
    test = cfg.test_dataloader.dataset
    test.ann_file, test.data_prefix = 'annotations/instances_train.json', dict(img='train/')
    cfg.test_evaluator.ann_file = mini_coco + '/annotations/instances_train.json'
    config = str(tmp_path / 'trained.py')
    cfg.dump(config)
    runner = Runner.from_cfg(cfg)
    runner.train()
    eager = runner.test()
    checkpoint = str(tmp_path / 'run' / f'iter_{MAP_ITERS}.pth')
    out = str(tmp_path / 'detector.onnx')
    export_checked(config, checkpoint, out, detector=True, input_hw=(192, 256), check_sizes=[(160, 256)],
                   logger=None)
    onnx_run = run_python(['tools/test_onnx.py', config, out, '--out', str(tmp_path / 'onnx.json')], timeout=600)
    assert onnx_run.returncode == 0, onnx_run.stderr[-2000:]
    with open(tmp_path / 'onnx.json') as f:
        onnx_metrics = json.load(f)['metrics']
    for key in ('coco/bbox_mAP', 'coco/segm_mAP'):
        assert f'{key}: ' in onnx_run.stdout   # printed as mmdet prints its metrics
        assert eager[key] > 0.05, (key, eager[key])   # it detects: the comparison means something
        assert abs(onnx_metrics[key] - eager[key]) <= 0.005, (key, onnx_metrics[key], eager[key])
    try:
        import openvino  # noqa: F401  (the optional extra)
    except ImportError:
        return
    openvino_run = run_python(['tools/test_onnx.py', config, out, '--openvino', '--out', str(tmp_path / 'ov.json')],
                              timeout=600)
    assert openvino_run.returncode == 0, openvino_run.stderr[-2000:]
    assert 'openvino: ' in openvino_run.stdout
    with open(tmp_path / 'ov.json') as f:
        openvino_metrics = json.load(f)['metrics']
    for key in ('coco/bbox_mAP', 'coco/segm_mAP'):
        assert abs(openvino_metrics[key] - eager[key]) <= 0.005, (key, openvino_metrics[key], eager[key])
