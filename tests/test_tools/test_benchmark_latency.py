"""tools/benchmark_latency.py: bad input refused naming the value, the script standalone, a
refused fusion naming the config, and the report files of a whole run (--fuse both with a
stand-in fused_copy; --images with --part backbone). Behaviour, never speed."""
import copy
import json
import os
import os.path as osp
import shlex
import sys
import types

import numpy as np
import pytest
import torch

from slab_mmdet.benchmark import summarize_timings
from slab_mmdet.benchmark.allocator import M_MMAP_MAX, M_TRIM_THRESHOLD, NEVER_TRIM
from slab_mmdet.benchmark.images import list_mini_coco_val
from slab_mmdet.benchmark.report import cpu_model
from slab_mmdet.models.layers import FusionError
from testing_utils.benchmark_utils import MASK_RCNN, SMALL_MASK_RCNN_OPTIONS, load_benchmark_cli


@pytest.fixture
def keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)

CUDA_ERROR_CASE = pytest.param(
    [MASK_RCNN, '--device', 'cuda'], "device 'cuda': CUDA is not available",
    marks=pytest.mark.skipif(torch.cuda.is_available(), reason='CUDA is available here'))

@pytest.mark.parametrize('argv, message', [
    (['configs/no_such_config.py'], "config not found: 'configs/no_such_config.py'"),
    ([MASK_RCNN, '--num-images', '0'], 'argument --num-images: must be >= 1, got 0'),
    ([MASK_RCNN, '--warmup', '-1'], 'argument --warmup: must be >= 0, got -1'),
    ([MASK_RCNN, '--threads', '0'], 'argument --threads: must be >= 1, got 0'),
    ([MASK_RCNN, '--checkpoint', 'a.pth', 'b.pth'], '2 checkpoints for 1 configs'),
    ([MASK_RCNN, '--checkpoint', 'no_such.pth'], "checkpoint not found: 'no_such.pth'"),
    ([MASK_RCNN, '--device', 'tpu'], "device 'tpu' is not valid; use 'cpu', 'cuda' or 'cuda:N'"),
    CUDA_ERROR_CASE,
    ([MASK_RCNN, '--fuse', 'maybe'], "argument --fuse: invalid choice: 'maybe'"),
    ([MASK_RCNN, '--images', '/no/such/dir'], "image folder not found: '/no/such/dir'"),
    ([MASK_RCNN, '--part', 'backbone', '--breakdown', 'extra-pass'], 'applies to whole detectors'),
    ([MASK_RCNN, '--cpu-allocator', 'jemalloc'], "argument --cpu-allocator: invalid choice: 'jemalloc'"),
])
def test_cli_rejects_bad_input_naming_the_value(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_benchmark_cli().main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err

def test_cli_script_runs_standalone():
    from testing_utils.helpers import run_python
    proc = run_python(['tools/benchmark_latency.py', '--help'])
    assert proc.returncode == 0, proc.stderr
    assert 'Examples:' in proc.stdout and '--fuse' in proc.stdout and '--mini' in proc.stdout

def test_fuse_failure_stops_naming_the_config(monkeypatch, capsys, mini_coco):
    def refuse(model):
        raise FusionError('backbone has LayerNorm, nothing to fold')   # what fused_copy raises
    monkeypatch.setitem(sys.modules, 'slab_mmdet.deploy', types.SimpleNamespace(fused_copy=refuse))
    with pytest.raises(SystemExit):
        load_benchmark_cli().main([MASK_RCNN, '--fuse', 'yes', '--mini', mini_coco, '--device', 'cpu'])
    err = capsys.readouterr().err
    assert f'cannot fuse the model of {MASK_RCNN}: backbone has LayerNorm' in err

@pytest.mark.slow
def test_cli_fuse_both_writes_consistent_report(mini_coco, tmp_path, monkeypatch, keep_torch_threads):
    calls = []

    def fake_fused_copy(model):
        fused = copy.deepcopy(model)
        calls.append(fused)
        fused.fake_fused = True
        return fused, {'removed_norms': 7}
    monkeypatch.setitem(sys.modules, 'slab_mmdet.deploy', types.SimpleNamespace(fused_copy=fake_fused_copy))
    out_dir = str(tmp_path / 'out')
    argv = [MASK_RCNN, '--fuse', 'both', '--mini', mini_coco, '--device', 'cpu', '--threads', '1',
            '--num-images', '2', '--warmup', '1', '--out-dir', out_dir, '--cfg-options'] + SMALL_MASK_RCNN_OPTIONS
    summary = load_benchmark_cli().main(argv)

    assert len(calls) == 1 and calls[0].fake_fused and not calls[0].training
    names = [m['name'] for m in summary['models']]
    assert names == ['mask_rcnn_pvt_t', 'mask_rcnn_pvt_t (fused)']
    assert [m['fused'] for m in summary['models']] == [False, True]
    assert summary['models'][1]['fuse_info'] == {'removed_norms': 7}

    with open(osp.join(out_dir, 'latency.json')) as f:
        report = json.load(f)
    assert report == json.loads(json.dumps(summary))
    settings, machine = report['settings'], report['machine']
    assert settings['num_images'] == 2 and settings['warmup'] == 1 and settings['breakdown'] == 'same-pass'
    assert mini_coco in settings['image_source']
    assert machine['threads'] == 1 and machine['device'] == 'cpu' and machine['device_name'] == cpu_model()
    assert machine['command'] == shlex.join(['python', 'tools/benchmark_latency.py'] + argv)
    assert len(report['images']) == 2 and all(p.startswith(mini_coco) for p in report['images'])

    first_mean, first_median = (report['models'][0]['latency_ms'][k] for k in ('mean', 'median'))
    for model in report['models']:
        raw = model['raw']
        stats = summarize_timings(raw['total_ms'])
        assert len(raw['total_ms']) == 2
        assert model['latency_ms'] == pytest.approx({k: stats[k] for k in model['latency_ms']})
        assert model['images_per_s'] == pytest.approx(1000 / stats['mean'])
        assert model['ratio_to_first']['mean'] == pytest.approx(stats['mean'] / first_mean)
        assert model['ratio_to_first']['median'] == pytest.approx(stats['median'] / first_median)
        assert set(raw['breakdown_ms']) == {'backbone', 'neck', 'rpn_head', 'roi_head', 'other'}
        # Same pass on the CPU: the parts and "other" add up to each timed total.
        part_sums = np.sum([raw['breakdown_ms'][p] for p in raw['breakdown_ms']], axis=0)
        assert part_sums == pytest.approx(raw['total_ms'])
        assert raw['breakdown_pass_ms'] == raw['total_ms']
        assert model['breakdown_ms']['roi_head'] == pytest.approx(np.mean(raw['breakdown_ms']['roi_head']))
        assert len(raw['memory_mib']) == 2 and model['memory']['peak_forward_mib'] == max(raw['memory_mib'])
        assert model['memory']['weights_mib'] > 0
        assert model['detections_mean'] == pytest.approx(np.mean(raw['detections']))

    with open(osp.join(out_dir, 'latency.md')) as f:
        markdown = f.read()
    assert '`python tools/benchmark_latency.py configs/mini/mask_rcnn_pvt_t.py --fuse both' in markdown
    assert 'torch threads: 1' in markdown and f'torch {torch.__version__}' in markdown
    assert 'Weights: random (no checkpoint)' in markdown
    for model in report['models']:
        lat = model['latency_ms']
        assert f'| {model["name"]} | {lat["mean"]:.2f} | {lat["median"]:.2f} | {lat["p90"]:.2f} |' in markdown
    assert '| mask_rcnn_pvt_t (fused) | 7 |' in markdown

    with open(osp.join(out_dir, 'latency.png'), 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    import matplotlib.image
    assert matplotlib.image.imread(osp.join(out_dir, 'latency.png')).ndim == 3

@pytest.mark.slow
def test_cli_images_dir_and_backbone_only(mini_coco, tmp_path, keep_torch_threads, recorded_mallopt):
    import cv2
    image_dir = tmp_path / 'images'
    image_dir.mkdir()
    for i, src in enumerate(list_mini_coco_val(mini_coco)[:3]):
        cv2.imwrite(str(image_dir / f'img{i}.png'), cv2.imread(src))
    (image_dir / 'notes.txt').write_text('not an image')
    out_dir = str(tmp_path / 'out')
    summary = load_benchmark_cli().main([MASK_RCNN, '--images', str(image_dir), '--part', 'backbone', '--device', 'cpu',
                                '--threads', '1', '--num-images', '4', '--warmup', '1', '--out-dir', out_dir,
                                '--cfg-options', SMALL_MASK_RCNN_OPTIONS[0]])
    pngs = sorted(str(image_dir / f'img{i}.png') for i in range(3))
    assert summary['images'] == pngs + pngs[:1]   # 3 images, reused in order to make 4
    assert summary['settings']['unique_images'] == 3
    assert summary['settings']['target'] == 'backbone'
    assert 'model.backbone(inputs)' in summary['settings']['timed_region']
    model = summary['models'][0]
    assert model['breakdown_ms'] is None and model['raw']['detections'] == [None] * 4
    assert len(model['raw']['total_ms']) == 4
    assert sorted(os.listdir(out_dir)) == ['latency.json', 'latency.md', 'latency.png']
    # By default the CPU run keeps freed memory for reuse, and the report says so.
    assert recorded_mallopt == [(M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM)]
    assert summary['machine']['cpu_allocator'].startswith('reuse: ')
    with open(osp.join(out_dir, 'latency.md')) as f:
        report = f.read()
    assert '- CPU allocator: reuse: glibc malloc keeping freed memory' in report
    assert 'Minor page faults per timed forward' in report and len(model['raw']['page_faults']) == 4


@pytest.mark.slow
def test_cli_compile_warms_every_image_shape_and_reports_the_first_forward(mini_coco, tmp_path, monkeypatch,
                                                                          keep_torch_threads, capsys):
    """With --compile the warm-up covers every distinct image (each new shape compiles), so
    no timed forward compiles; the report gives each model's first forward. torch.compile
    is a stand-in here (compiling a Mask R-CNN takes minutes)."""
    from slab_mmdet.benchmark import candidates
    compiled = []
    monkeypatch.setattr(candidates.torch, 'compile', lambda module, mode: compiled.append(mode) or module)
    out_dir = str(tmp_path / 'out')
    summary = load_benchmark_cli().main([MASK_RCNN, '--compile', '--mini', mini_coco, '--device', 'cpu',
                                         '--threads', '1', '--num-images', '3', '--warmup', '1', '--breakdown', 'off',
                                         '--out-dir', out_dir, '--cfg-options'] + SMALL_MASK_RCNN_OPTIONS)
    assert compiled == ['default', 'default']   # backbone and neck
    assert summary['settings']['warmup'] == 3   # raised from 1: the mini split's 4 val images, 3 used
    assert '--compile: warm-up 1 -> 3 rounds, one per distinct image' in capsys.readouterr().out
    (model,) = summary['models']
    assert model['name'] == 'mask_rcnn_pvt_t (compiled)' and model['compiled'] == 'default'
    assert len(model['raw']['warmup_ms']) == 3 and model['first_forward_ms'] == model['raw']['warmup_ms'][0]
    markdown = open(osp.join(out_dir, 'latency.md')).read()
    assert '## torch.compile' in markdown and '| mask_rcnn_pvt_t (compiled) | default |' in markdown


def test_cli_compile_never_falls_back_to_eager_silently(mini_coco, tmp_path, monkeypatch, keep_torch_threads):
    """During a compiled run dynamo has room for a graph per distinct image and stops the run at
    its limit instead of running eager code that the report would call compiled; the limits are
    torch's own again afterwards. --compile-shapes static reaches torch.compile."""
    import torch._dynamo.config as dynamo_config

    from slab_mmdet.benchmark import candidates, session
    before = (dynamo_config.recompile_limit, dynamo_config.fail_on_recompile_limit_hit)
    seen, options = [], []
    monkeypatch.setattr(candidates.torch, 'compile', lambda module, **kw: options.append(kw) or module)

    def fake_benchmark(models, images, warmup, breakdown=None, clock=None, progress=None, shared_boxes=False):
        seen.append((dynamo_config.recompile_limit, dynamo_config.fail_on_recompile_limit_hit, images.num_unique))
        raise session.BenchmarkError('stop here')
    monkeypatch.setattr(session, 'benchmark_detectors', fake_benchmark)
    with pytest.raises(SystemExit):
        load_benchmark_cli().main([MASK_RCNN, '--compile', '--compile-shapes', 'static', '--mini', mini_coco,
                                   '--device', 'cpu', '--num-images', '3', '--out-dir', str(tmp_path)])
    (limit, fail, distinct), = seen
    assert fail is True and limit >= distinct + 1 and limit >= 8
    assert options == [dict(mode='default', dynamic=False)] * 2
    assert (dynamo_config.recompile_limit, dynamo_config.fail_on_recompile_limit_hit) == before


def test_cli_shared_boxes_feed_every_model_the_first_ones(mini_coco, tmp_path, keep_torch_threads):
    """--shared-boxes: the first model's boxes recorded untimed and fed to every model's heads
    (the schedule says so, every model keeps as many detections); refused for backbone timing."""
    summary = load_benchmark_cli().main([MASK_RCNN, MASK_RCNN, '--shared-boxes', '--mini', mini_coco, '--device', 'cpu',
                                         '--threads', '1', '--num-images', '2', '--warmup', '0', '--out-dir',
                                         str(tmp_path), '--cfg-options'] + SMALL_MASK_RCNN_OPTIONS
                                        + ['model.test_cfg.rcnn.score_thr=0.0'])
    assert "A's boxes recorded in an untimed pass over the images" in summary['settings']['schedule']
    assert [m['raw']['detections'] for m in summary['models']] == [[5, 5], [5, 5]]
    with pytest.raises(SystemExit) as exit_info:
        load_benchmark_cli().main([MASK_RCNN, '--shared-boxes', '--part', 'backbone', '--mini', mini_coco])
    assert exit_info.value.code == 2
