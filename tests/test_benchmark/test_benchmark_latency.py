"""The batch-1 latency benchmark (slab_mmdet.benchmark, tools/benchmark_latency.py).

Behaviour, never speed: the call order (interleaving), what the timed region contains
(a fake clock that only preprocessing and chosen model parts advance), statistics and
ratios recomputed from the raw timings, the report files, the per-part breakdown of two-
and one-stage detectors, --fuse plumbing with a stand-in fuse function, and the errors.
"""
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
from torch import nn

from slab_mmdet.benchmark import (BenchmarkError, PartTimer, benchmark_detectors, load_config, load_models,
                                  memory_probe,
                                  resolve_images, select_images, summarize_result, summarize_timings)
from slab_mmdet.benchmark.images import list_mini_coco_val
from slab_mmdet.models.layers import FusionError
from slab_mmdet.benchmark.measure import RssPeakMemory
from slab_mmdet.benchmark.candidates import unique_names
from slab_mmdet.benchmark.report import cpu_model, machine_facts, render_markdown
from testing_utils import REPO_ROOT
from testing_utils.helpers import load_script

MASK_RCNN = 'configs/mini/mask_rcnn_pvt_t.py'
# Small images and few proposals/detections, so that a Mask R-CNN forward takes ~0.1 s on a CPU.
SMALL_MASK_RCNN_OPTIONS = ['test_dataloader.dataset.pipeline.1.scale=(128,96)', 'model.test_cfg.rpn.nms_pre=100',
                           'model.test_cfg.rpn.max_per_img=20', 'model.test_cfg.rcnn.max_per_img=5']
SMALL_TEST_PIPELINE = """[
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 96), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]"""


def _load_cli():
    return load_script('tools/benchmark_latency.py', 'benchmark_latency')


def write_small_config(directory, name, base, model):
    """A config inheriting `base`, with `model` overrides and a small-image test pipeline."""
    path = osp.join(directory, name + '.py')
    with open(path, 'w') as f:
        f.write(f'_base_ = {base!r}\nmodel = {model!r}\n'
                f'test_dataloader = dict(dataset=dict(pipeline={SMALL_TEST_PIPELINE}))\n')
    return path


@pytest.fixture
def small_configs(tmp_path):
    """A two-stage (Mask R-CNN, mmdet's PVT-T) and a one-stage (RetinaNet R18) detector, both small."""
    two_stage = write_small_config(str(tmp_path), 'two_stage', osp.join(REPO_ROOT, MASK_RCNN), dict(
        test_cfg=dict(rpn=dict(nms_pre=100, max_per_img=20), rcnn=dict(max_per_img=5))))
    one_stage = write_small_config(str(tmp_path), 'one_stage', 'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py', dict(
        bbox_head=dict(num_classes=6), test_cfg=dict(nms_pre=100, max_per_img=5)))
    return two_stage, one_stage


@pytest.fixture
def keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


class FakeClock:
    """A clock that only moves when told to: measured times are exactly what was advanced inside."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def advance_on_call(module, method, clock, seconds):
    """Make `module.method` advance `clock` by `seconds` on each call (an instance attribute)."""
    original = getattr(module, method)

    def slow(*args, **kwargs):
        clock.advance(seconds)
        return original(*args, **kwargs)
    setattr(module, method, slow)


# --------------------------------------------------------------------------- statistics, timers, memory

def test_summarize_timings_matches_numpy():
    ms = [12.0, 10.0, 11.0, 30.0, 10.5]
    stats = summarize_timings(ms)
    assert stats['n'] == 5
    assert stats['mean'] == pytest.approx(np.mean(ms))
    assert stats['median'] == pytest.approx(11.0)
    assert stats['p90'] == pytest.approx(np.percentile(ms, 90))
    assert stats['p99'] == pytest.approx(np.percentile(ms, 99))
    assert stats['std'] == pytest.approx(np.std(ms, ddof=1))
    assert stats['images_per_s'] == pytest.approx(1000 / np.mean(ms))
    assert summarize_timings([5.0])['std'] == 0.0
    with pytest.raises(ValueError):
        summarize_timings([])


class _Part(nn.Module):
    def __init__(self, clock, seconds, inner=None):
        super().__init__()
        self.clock, self.seconds, self.inner = clock, seconds, inner

    def forward(self, x):
        self.clock.advance(self.seconds)
        return self.inner(x) if self.inner is not None else x

    def predict(self, x):
        return self.forward(x)


def test_paired_ratio_is_the_median_of_per_image_ratios():
    """Each image's time over the reference's time for the same image (one round), so a slow
    round of the machine cancels; the mean of the totals does not cancel it."""
    from slab_mmdet.benchmark.report import format_paired, paired_ratio
    reference = [100.0, 100.0, 300.0, 100.0, 100.0]   # the third round ran on a busy machine
    model = [70.0, 80.0, 240.0, 75.0, 90.0]
    paired = paired_ratio(model, reference)
    assert paired['median'] == pytest.approx(0.8) and paired['n'] == 5
    assert paired['p10'] == pytest.approx(np.percentile([0.7, 0.8, 0.8, 0.75, 0.9], 10))
    assert paired['p90'] == pytest.approx(np.percentile([0.7, 0.8, 0.8, 0.75, 0.9], 90))
    assert sum(model) / sum(reference) == pytest.approx(555 / 700)   # what the mean ratio would say
    assert format_paired(paired) == '0.800 (0.72-0.86)'
    assert format_paired(None) == '–'


def test_part_timer_accounts_outermost_parts_and_restores_methods():
    clock = FakeClock()
    toy = nn.Module()
    toy.neck = _Part(clock, 0.002)
    toy.backbone = _Part(clock, 0.010, inner=toy.neck)   # the neck runs inside the backbone here
    toy.bbox_head = _Part(clock, 0.003)
    timer = PartTimer(toy, clock=clock)
    assert timer.parts == ['backbone', 'neck', 'bbox_head']
    with timer:
        toy.bbox_head.predict(toy.backbone(torch.zeros(1)))
        toy.neck(torch.zeros(1))
    assert timer.elapsed['backbone'] == pytest.approx(0.012)   # includes the nested neck call
    assert timer.elapsed['neck'] == pytest.approx(0.002)       # only the top-level call
    assert timer.elapsed['bbox_head'] == pytest.approx(0.003)
    for part, method in (('backbone', 'forward'), ('neck', 'forward'), ('bbox_head', 'predict')):
        assert method not in vars(getattr(toy, part))
    timer.reset()
    assert set(timer.elapsed.values()) == {0.0}


def test_rss_probe_measures_a_calls_peak_not_what_it_keeps():
    probe = memory_probe('cpu')
    assert isinstance(probe, RssPeakMemory) and not probe.in_timed_pass
    probe.start()
    block = np.ones(64 * 1024 ** 2 // 8)   # 64 MiB, touched, then freed before stop()
    del block
    growth, device_peak = probe.stop()
    assert growth >= 60 and device_peak is None


def test_unique_names_disambiguate_equal_stems():
    assert unique_names(['a/x.py', 'b/x.py', 'mmdet::r/y.py']) == ['a/x', 'b/x', 'y']
    assert unique_names(['a/x.py', 'a/x.py']) == ['a/x', 'a/x #2']


# --------------------------------------------------------------------------- errors

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
])
def test_cli_rejects_bad_input_naming_the_value(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _load_cli().main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_script_runs_standalone():
    from testing_utils.helpers import run_python
    proc = run_python(['tools/benchmark_latency.py', '--help'])
    assert proc.returncode == 0, proc.stderr
    assert 'Examples:' in proc.stdout and '--fuse' in proc.stdout and '--mini' in proc.stdout


def test_missing_dataset_names_the_path_and_suggests_images_or_mini(tmp_path, capsys):
    missing_root = str(tmp_path / 'nowhere') + '/'
    with pytest.raises(SystemExit):
        _load_cli().main([MASK_RCNN, '--cfg-options', f'test_dataloader.dataset.data_root={missing_root}'])
    err = capsys.readouterr().err
    assert missing_root + 'annotations/instances_val.json' in err
    assert '--images DIR' in err and '--mini' in err
    with pytest.raises(BenchmarkError, match=r'mini COCO val split not found: .*nowhere/val.*make_mini_coco'):
        resolve_images(None, 2, mini_root=str(tmp_path / 'nowhere'))


def test_default_images_are_the_configs_test_dataset_in_order(mini_coco):
    cfg = load_config(MASK_RCNN, {'test_dataloader.dataset.data_root': mini_coco + '/'})
    val = list_mini_coco_val(mini_coco)   # the generator names files by image id, in dataset order
    images = resolve_images(cfg, 3, config_name=MASK_RCNN)
    assert images.paths == val[:3] and images.num_unique == 3
    assert images.source == f'test dataset of {MASK_RCNN}'
    reused = resolve_images(cfg, 6, config_name=MASK_RCNN)   # 4 val images: reused in order
    assert reused.paths == val + val[:2] and reused.num_unique == 4


def test_fuse_without_deploy_module_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, 'slab_mmdet.deploy', None)   # makes the import fail
    with pytest.raises(BenchmarkError, match='--fuse needs slab_mmdet.deploy.fused_copy'):
        load_models([MASK_RCNN], fuse='yes', log=None)


def test_fuse_failure_stops_naming_the_config(monkeypatch, capsys, mini_coco):
    def refuse(model):
        raise FusionError('backbone has LayerNorm, nothing to fold')   # what fused_copy raises
    monkeypatch.setitem(sys.modules, 'slab_mmdet.deploy', types.SimpleNamespace(fused_copy=refuse))
    with pytest.raises(SystemExit):
        _load_cli().main([MASK_RCNN, '--fuse', 'yes', '--mini', mini_coco, '--device', 'cpu'])
    err = capsys.readouterr().err
    assert f'cannot fuse the model of {MASK_RCNN}: backbone has LayerNorm' in err


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

# --------------------------------------------------------------------------- the benchmark loop

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


def test_interleaved_order_untimed_preprocessing_and_breakdown(small_configs, mini_coco):
    """Only model parts advance the fake clock inside the timed region; the pipeline and the
    data_preprocessor advance it by much more, outside. So every measured time is exact."""
    clock = FakeClock()
    models = load_models(small_configs, device='cpu', log=None)
    part_seconds = [dict(backbone=0.010, neck=0.002, rpn_head=0.001, roi_head=0.005),   # two-stage
                    dict(backbone=0.004, neck=0.001, bbox_head=0.003)]                   # one-stage
    for bench_model, parts in zip(models, part_seconds):
        bench_model.pipeline.transforms.insert(0, lambda results: clock.advance(100.0) or results)  # "slow" loading
        advance_on_call(bench_model.model.data_preprocessor, 'forward', clock, 50.0)
        for part, seconds in parts.items():
            advance_on_call(getattr(bench_model.model, part), 'forward' if part in ('backbone', 'neck') else 'predict',
                            clock, seconds)
    images = select_images(list_mini_coco_val(mini_coco), 2, 'mini')
    result = benchmark_detectors(models, images, warmup=1, breakdown='extra-pass', clock=clock, progress=False)

    # The timed order rotates per image (A B, then B A); the other passes keep A B.
    per_image = [[('timed', 0), ('timed', 1), ('breakdown', 0), ('breakdown', 1), ('memory', 0), ('memory', 1)],
                 [('timed', 1), ('timed', 0), ('breakdown', 0), ('breakdown', 1), ('memory', 0), ('memory', 1)]]
    assert result.events == [('warmup', 0, 0), ('warmup', 1, 0)] + [
        (kind, model, k) for k in range(2) for kind, model in per_image[k]]
    assert 'rotates by one model per image' in result.schedule
    for timings, parts in zip(result.timings, part_seconds):
        expected_ms = sum(parts.values()) * 1e3
        assert timings.total_ms == pytest.approx([expected_ms] * 2, abs=1e-6)
        assert set(timings.breakdown_ms) == set(parts) | {'other'}
        for part, seconds in parts.items():
            assert timings.breakdown_ms[part] == pytest.approx([seconds * 1e3] * 2, abs=1e-6)
        assert timings.breakdown_ms['other'] == pytest.approx([0.0, 0.0], abs=1e-6)
        assert len(timings.memory_mib) == 2 and all(m >= 0 for m in timings.memory_mib)
        assert all(d is not None and d >= 0 for d in timings.detections)

    summary = summarize_result(result, machine={})
    one_stage = summary['models'][1]
    assert one_stage['ratio_to_first']['mean'] == pytest.approx(8 / 18)
    assert one_stage['ratio_to_first']['median'] == pytest.approx(8 / 18)
    assert one_stage['breakdown_ms']['bbox_head'] == pytest.approx(3.0, abs=1e-6)
    for bench_model in models:   # the timers put back the methods they wrapped
        assert 'slow' == bench_model.model.backbone.forward.__name__


def test_latency_only_runs_no_memory_pass_and_says_so(small_configs, mini_coco):
    """memory=False: no probe and no memory pass; the schedule and the report say memory was
    not measured instead of showing a number."""
    models = load_models(small_configs, device='cpu', log=None)
    images = select_images(list_mini_coco_val(mini_coco), 2, 'mini')
    result = benchmark_detectors(models, images, warmup=0, breakdown='off', progress=False, memory=False)
    assert [kind for kind, _, _ in result.events] == ['timed'] * 4
    assert 'memory' not in result.schedule and result.memory_method == 'not measured'
    assert all(t.memory_mib == [] and len(t.total_ms) == 2 for t in result.timings)
    summary = summarize_result(result, machine_facts('cpu', 'test'))
    assert all(m['memory']['peak_forward_mib'] is None for m in summary['models'])
    table = render_markdown(summary)
    assert '- Memory: not measured' in table


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
    summary = _load_cli().main(argv)

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
def test_cli_images_dir_and_backbone_only(mini_coco, tmp_path, keep_torch_threads):
    import cv2
    image_dir = tmp_path / 'images'
    image_dir.mkdir()
    for i, src in enumerate(list_mini_coco_val(mini_coco)[:3]):
        cv2.imwrite(str(image_dir / f'img{i}.png'), cv2.imread(src))
    (image_dir / 'notes.txt').write_text('not an image')
    out_dir = str(tmp_path / 'out')
    summary = _load_cli().main([MASK_RCNN, '--images', str(image_dir), '--part', 'backbone', '--device', 'cpu',
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
