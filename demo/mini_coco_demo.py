"""The main job end to end on mini COCO: the program ``make demo`` runs.

    python demo/mini_coco_demo.py --out-dir work_dirs/demo

1. make mini COCO (200 train / 50 val images) unless it is there;
2. train a SLAB-PVT-T Mask R-CNN from scratch on the CPU while PRepBNHook anneals every
   PRepBN from g = 1 (LayerNorm) to g = 0 (RepBN), and evaluate COCO bbox/segm mAP on
   the val split;
3. fuse the norms (``fuse_checkpoint``: checks fused = unfused on an image, writes the
   deploy config and the fused checkpoint) and evaluate the fused model on the val
   split again, through the deploy config, as mmdet's own test loop would;
4. benchmark at batch 1: first the backbones at COCO test resolution (images resized to
   1333x800): the trained SLAB-PVT-T fused against its LayerNorm + softmax twin (what SLAB
   itself buys), then timm's PVTv2-b1 and mmdet's PVT-T, the speed a user of COCO-sized
   inputs sees; then the whole detectors at mini-COCO size, the twin vs unfused vs fused;
5. write ``report.md`` (leading with the COCO-resolution comparison) with a picture of
   val images with their ground truth and the trained and fused detectors' detections,
   and PNGs of the loss and g curves and the latency bars.
"""
import argparse
import json
import os
import os.path as osp
import time

from mmengine.config import DictAction

# realpath: the venv links site-packages/slab_mmdet to the checkout (for mim).
REPO_ROOT = osp.dirname(osp.dirname(osp.realpath(__file__)))
DEFAULT_CONFIG = osp.join(REPO_ROOT, 'configs', 'mini', 'mask_rcnn_slab_pvt_t.py')
DEFAULT_BASELINE = osp.join(REPO_ROOT, 'configs', 'mini', 'mask_rcnn_pvt_t.py')
TARGET_BBOX_MAP = 0.3


def _options(data_root, cfg_options=None):
    """Config overrides: the mini COCO location, then the caller's ``cfg_options``."""
    root = data_root.rstrip('/') + '/'
    options = {f'{split}.dataset.data_root': root for split in ('train_dataloader', 'val_dataloader',
                                                                 'test_dataloader')}
    options.update({f'{split}.ann_file': root + 'annotations/instances_val.json'
                    for split in ('val_evaluator', 'test_evaluator')})
    options.update(cfg_options or {})
    return options


def _metrics(metrics):
    return {k.split('/')[-1]: float(v) for k, v in metrics.items() if k.startswith('coco/')}


class _Steps:
    """Prints each step's header and records how long it took."""

    def __init__(self, log):
        self.log, self.times, self._current, self._start = log, {}, None, None

    def __call__(self, name):
        self.stop()
        self._current, self._start = name, time.perf_counter()
        self.log(f'\n========== [demo] {name} ==========')

    def stop(self):
        if self._current is not None:
            self.times[self._current] = time.perf_counter() - self._start
            self._current = None


def train(config, options, work_dir):
    """Train as tools/train.py does (validating at the end, as the config says).

    Returns (final checkpoint, val metrics, per-iteration history of loss and g, the recipe:
    batch size, backbone norms, custom hooks).
    """
    from mmengine.hooks import Hook

    from slab_mmdet.engine.run_config import build_runner, load_run_config

    class KeepValMetrics(Hook):
        priority = 'LOWEST'

        def after_val_epoch(self, runner, metrics=None):
            self.metrics = dict(metrics or {})

    cfg = load_run_config(config, options, work_dir)
    backbone = cfg.model.backbone
    recipe = dict(batch_size=cfg.train_dataloader.batch_size, norm_cfg=dict(backbone.norm_cfg),
                  norm_eval=backbone.get('norm_eval', False), out_norm_cfg=backbone.get('out_norm_cfg'),
                  hooks=[h['type'] for h in cfg.get('custom_hooks', [])])
    runner = build_runner(cfg)
    keep = KeepValMetrics()
    runner.register_hook(keep)
    runner.train()
    scalars = runner.message_hub.log_scalars
    history = {key: scalars[f'train/{key}'].data[0].tolist() for key in ('loss', 'prepbn_g')}
    checkpoint = osp.join(work_dir, f'epoch_{runner.max_epochs}.pth')
    return checkpoint, _metrics(getattr(keep, 'metrics', {})), history, recipe


def evaluate(config, checkpoint, options, work_dir):
    """COCO bbox/segm metrics of `checkpoint` on the val split, as tools/test.py computes them."""
    from slab_mmdet.engine.run_config import build_runner, load_run_config
    cfg = load_run_config(config, options, work_dir)
    cfg.load_from = checkpoint
    return _metrics(build_runner(cfg).test())


def plot_training(history, path):
    """Loss and g per iteration, one PNG."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(10, 3.8), layout='constrained')
    FigureCanvasAgg(fig)
    ax_loss, ax_g = fig.subplots(1, 2)
    loss = np.asarray(history['loss'])
    it = np.arange(len(loss))
    ax_loss.plot(it, loss, lw=0.6, alpha=0.4, label='per iteration')
    window = min(25, len(loss))
    if window > 1:
        smooth = np.convolve(loss, np.ones(window) / window, mode='valid')
        ax_loss.plot(it[window - 1:], smooth, lw=1.5, label=f'mean of {window}')
    ax_loss.set(xlabel='iteration', ylabel='total loss', title='training loss', yscale='log')
    ax_loss.legend()
    ax_g.plot(np.arange(len(history['prepbn_g'])), history['prepbn_g'], color='tab:red')
    ax_g.set(xlabel='iteration', ylabel='g', title='PRepBN g (1 = LayerNorm, 0 = RepBN)', ylim=(-0.05, 1.05))
    fig.savefig(path, dpi=100)


def benchmark(checkpoint, config, options, data_root, out_dir, num_images, warmup, threads):
    """The LayerNorm + softmax twin of ``config`` (random weights; the reference of the ratios)
    vs the trained model unfused and fused, whole detectors, interleaved, batch 1."""
    import torch
    from slab_mmdet.benchmark import FIXED_DETECTIONS, benchmark_detectors, load_models, set_cpu_allocator
    from slab_mmdet.benchmark.images import list_mini_coco_val, select_images
    from slab_mmdet.benchmark.report import machine_facts, summarize_result, write_report
    from slab_mmdet.benchmark.twin import write_twin_config
    if threads:
        torch.set_num_threads(threads)
    set_cpu_allocator('reuse')   # as tools/benchmark_latency.py: no model pays page faults at every image
    models = load_models([write_twin_config(config, out_dir, options)], cfg_options={**options, **FIXED_DETECTIONS})
    models[-1].name += ' (LayerNorm + softmax twin)'
    models += load_models([config], [checkpoint], fuse='both', cfg_options={**options, **FIXED_DETECTIONS})
    images = select_images(list_mini_coco_val(data_root), num_images, f'{data_root} val')
    summary = summarize_result(benchmark_detectors(models, images, warmup=warmup),
                               machine_facts('cpu', 'make demo'))
    return summary, write_report(summary, out_dir, stem='latency')


def benchmark_coco_size_backbones(checkpoint, config, options, baseline, data_root, out_dir, num_images, warmup,
                                  threads):
    """What SLAB itself buys, then what an implementation adds: the LayerNorm + softmax twin
    of ``config`` (derived from it, :mod:`.benchmark.twin`; the reference of the ratios), the
    trained model's fused backbone, timm's PVTv2-b1 (SDPA attention, the fastest peer) and
    mmdet's PVT-T (``baseline``, its slower attention), random weights except the trained model,
    on mini COCO val images resized as COCO test images are, interleaved, batch 1."""
    import torch
    from slab_mmdet.benchmark import (COCO_TEST_SCALE, benchmark_backbones, load_models, resized_test_pipeline_options,
                                      set_cpu_allocator)
    from slab_mmdet.benchmark.images import list_mini_coco_val, select_images
    from slab_mmdet.benchmark.peers import timm_peer_options
    from slab_mmdet.benchmark.report import machine_facts, summarize_result, write_report
    from slab_mmdet.benchmark.twin import write_twin_config
    if threads:
        torch.set_num_threads(threads)
    set_cpu_allocator('reuse')   # as tools/benchmark_latency.py: no model pays page faults at every image
    at_coco_size = resized_test_pipeline_options(config, COCO_TEST_SCALE)
    twin = write_twin_config(config, out_dir, options)
    models = load_models([twin], cfg_options={**options, **at_coco_size})
    models[-1].name = 'PVT-T twin (this code, LayerNorm + softmax SDPA)'
    models += load_models([config], [checkpoint], fuse='yes', cfg_options={**options, **at_coco_size})
    models[-1].name = 'SLAB-PVT-T, trained (fused)'
    baseline_at_coco_size = resized_test_pipeline_options(baseline, COCO_TEST_SCALE)
    models += load_models([baseline], cfg_options={**baseline_at_coco_size, 'model': timm_peer_options('pvt_v2_b1')})
    models[-1].name = 'PVTv2-b1 (timm, SDPA)'
    models += load_models([baseline], cfg_options=baseline_at_coco_size)
    models[-1].name = "PVT-T (mmdet's implementation)"
    images = select_images(list_mini_coco_val(data_root), num_images, f'{data_root} val')
    input_hw = models[0].padded_input_hw(images.paths[0])   # the first image's
    # Latency only: the memory pass cost about 20 s of the demo's 12-minute budget.
    summary = summarize_result(benchmark_backbones(models, images, warmup=warmup, memory=False),
                               machine_facts('cpu', 'make demo'))
    summary['settings']['input_hw'] = input_hw
    return summary, write_report(summary, out_dir, stem='backbones_coco_size')


def draw_detections(config, checkpoint, fused, options, out_path, num_images, score_thr):
    """The picture of detections (:func:`demo_pictures.detection_grid`) of the first
    ``num_images`` val images: ground truth, the trained model's, the fused model's."""
    from slab_mmdet.apis import load_detector
    from demo_pictures import detection_grid
    models = [load_detector(config, checkpoint, options), load_detector(fused['config'], fused['checkpoint'], options)]
    dataset_cfg = models[0].cfg.val_dataloader.dataset
    return detection_grid(models, dataset_cfg, range(num_images), out_path, score_thr=score_thr)


def run_demo(out_dir='work_dirs/demo', data_root='data/mini_coco', config=DEFAULT_CONFIG, baseline=DEFAULT_BASELINE,
             num_images=10, warmup=1, threads=None, cfg_options=None, mini_coco_size=(200, 50), log=print,
             coco_size_images=3, picture_images=4, picture_score_thr=0.3):
    """Run every step; returns the report's data (also written to ``<out_dir>/report.json``).

    ``cfg_options`` (a dict as from ``--cfg-options``) overrides the trained config, e.g. a
    shorter schedule; ``mini_coco_size`` is the (train, val) image count of mini COCO;
    ``num_images`` and ``coco_size_images`` are the images timed per model at mini-COCO size
    and at COCO test resolution (``warmup`` rounds before each); ``picture_images`` val images
    are drawn with the detections scoring ``picture_score_thr`` or more.
    """
    from slab_mmdet.datasets import ensure_mini_coco
    from slab_mmdet.deploy import fuse_checkpoint
    os.makedirs(out_dir, exist_ok=True)
    started = time.perf_counter()
    step = _Steps(log)

    step('1/5 mini COCO')
    ensure_mini_coco(data_root, num_train=mini_coco_size[0], num_val=mini_coco_size[1], seed=0, log=log)
    options = _options(data_root, cfg_options)
    with open(osp.join(data_root, 'annotations', 'instances_val.json')) as f:
        num_val = len(json.load(f)['images'])

    step('2/5 train SLAB-PVT-T Mask R-CNN on the CPU, PRepBN g: 1 -> 0')
    checkpoint, metrics, history, recipe = train(config, options, osp.join(out_dir, 'train'))
    if 'bbox_mAP' not in metrics:   # the config does not validate at the end of training
        metrics = evaluate(config, checkpoint, options, osp.join(out_dir, 'eval'))
    plot_training(history, osp.join(out_dir, 'training.png'))

    step('3/5 fuse the norms, check fused = unfused, evaluate the fused model, draw detections')
    fused = fuse_checkpoint(config, checkpoint, osp.join(out_dir, 'deploy'), cfg_options=options, logger=log)
    fused_metrics = evaluate(fused['config'], fused['checkpoint'], options, osp.join(out_dir, 'eval_fused'))
    pictures = draw_detections(config, checkpoint, fused, options, osp.join(out_dir, 'detections.png'),
                               min(picture_images, num_val), picture_score_thr)

    step('4/5 benchmark (batch 1): backbones at COCO test resolution, then detectors at mini-COCO size')
    backbones, backbone_files = benchmark_coco_size_backbones(
        checkpoint, config, options, baseline, data_root, osp.join(out_dir, 'benchmark'), coco_size_images, warmup,
        threads)
    latency, latency_files = benchmark(checkpoint, config, options, data_root,
                                       osp.join(out_dir, 'benchmark'), num_images, warmup, threads)

    step('5/5 report')
    step.stop()
    report = dict(config=osp.relpath(config, REPO_ROOT), checkpoint=checkpoint, iterations=len(history['loss']),
                  recipe=recipe,
                  final_g=history['prepbn_g'][-1], val_images=num_val, metrics=metrics, fused_metrics=fused_metrics,
                  fusion=dict(removed_norms=fused['report']['removed_norms'],
                              output_norms=fused['report']['output_norms'],
                              features=fused['diff']['features'], detections=fused['diff']['detections']),
                  backbone_latency=dict(input_hw=backbones['settings']['input_hw'],
                                        models=[dict(name=m['name'], **m['latency_ms'], ratio=m['ratio_to_first'])
                                                for m in backbones['models']]),
                  latency=[dict(name=m['name'], **m['latency_ms'], ratio=m['ratio_to_first'])
                           for m in latency['models']],
                  detections=pictures, machine=latency['machine'], step_seconds=step.times,
                  total_seconds=time.perf_counter() - started)
    with open(osp.join(out_dir, 'report.json'), 'w') as f:
        json.dump(report, f, indent=1, default=str)
    with open(osp.join(out_dir, 'report.md'), 'w') as f:
        f.write(render_report(report, latency_files, backbone_files))
    log(f'\n[demo] bbox mAP {metrics["bbox_mAP"]:.3f} (target >= {TARGET_BBOX_MAP}), segm mAP '
        f'{metrics["segm_mAP"]:.3f}; fused: bbox {fused_metrics["bbox_mAP"]:.3f}, segm {fused_metrics["segm_mAP"]:.3f}')
    log(f'[demo] report: {osp.join(out_dir, "report.md")} ({report["total_seconds"] / 60:.1f} min in all)')
    return report


def _describe_detection_diff(diff):
    count_a, count_b = diff['count']
    if count_a != count_b:
        return f'detections differ in number: {count_a} unfused vs {count_b} fused'
    if count_a == 0:
        return 'no detections in either'
    return (f'{count_a} detections each, labels {"equal" if diff["labels_equal"] else "DIFFERENT"}, box '
            f'coordinates within {diff["boxes"]:.1e} of the image size, scores within {diff["scores"]:.1e}, '
            f'{diff.get("masks", 0.0):.1e} of mask pixels different')


def _describe_recipe(recipe):
    norm = recipe['norm_cfg']
    out = recipe['out_norm_cfg'] or 'as norm_cfg'
    n = recipe['batch_size']
    return (f'Recipe: {n} image{"s" if n != 1 else ""} per batch; norms `{norm}` (RepBN alpha starts at '
            f'{norm.get("alpha_init", 1.0):g}); BatchNorm statistics '
            f'{"frozen (norm_eval=True)" if recipe["norm_eval"] else "trained"}; output norms `{out}`; '
            f'hooks {", ".join(recipe["hooks"])}.')


def _nested_markdown(path):
    """A benchmark report's Markdown with its headings moved under this report's sections."""
    with open(path) as f:
        return ('\n' + f.read()).replace('\n# ', '\n### ').replace('\n## ', '\n### ').lstrip('\n')


def _paired(ratio):
    paired = ratio.get('paired') or {}
    return '–' if paired.get('median') is None else f'{paired["median"]:.2f}'


def render_report(report, latency_files, backbone_files):
    from slab_mmdet.benchmark import COCO_TEST_SCALE
    latency_md = _nested_markdown(latency_files['md'])
    backbone_md = _nested_markdown(backbone_files['md'])
    m, fm = report['metrics'], report['fused_metrics']
    fusion = report['fusion']
    backbones = report['backbone_latency']
    h, w = backbones['input_hw']    # of the first image
    lines = [
        '# slab-mmdet demo: SLAB-PVT-T Mask R-CNN on mini COCO', '',
        f'Config `{report["config"]}`, trained from scratch on the CPU '
        f'({report["machine"].get("cpu", "")}, {report["machine"].get("threads")} threads). '
        f'{report["iterations"]} iterations; PRepBN annealed from g = 1 to g = {report["final_g"]:g}.', '',
        _describe_recipe(report['recipe']), '',
        '## Backbone speed at COCO test resolution (batch 1)', '',
        'What SLAB itself buys: the trained SLAB-PVT-T, fused, against its twin, the same code with '
        'LayerNorm and softmax attention through SDPA (the first row, the reference of the ratios). '
        'Then the peers: timm\'s PVTv2-b1 (SDPA attention) and mmdet\'s PVT-T, whose slower attention '
        'implementation is most of its gap (random weights; latency does not depend on the values). '
        'On mini COCO val images resized as COCO test images '
        f'are ({COCO_TEST_SCALE[0]}x{COCO_TEST_SCALE[1]}, keep ratio; the first is {h}x{w} once padded); '
        'the ratio is the median of the per-image ratios:', '',
        '| backbone | mean (ms) | median (ms) | ratio to the twin |', '|---|---:|---:|---:|',
        *[f'| {b["name"]} | {b["mean"]:.0f} | {b["median"]:.0f} | {_paired(b["ratio"])} |'
          for b in backbones['models']], '',
        '![backbones at COCO size](benchmark/backbones_coco_size.png)', '', backbone_md, '',
        f'## Validation (mini COCO val, {report["val_images"]} images)', '',
        '| model | bbox mAP | bbox mAP50 | segm mAP | segm mAP50 |', '|---|---:|---:|---:|---:|',
        f'| trained (PRepBN, g = 0) | {m["bbox_mAP"]:.3f} | {m["bbox_mAP_50"]:.3f} | {m["segm_mAP"]:.3f} | '
        f'{m["segm_mAP_50"]:.3f} |',
        f'| fused (no norm layers) | {fm["bbox_mAP"]:.3f} | {fm["bbox_mAP_50"]:.3f} | {fm["segm_mAP"]:.3f} | '
        f'{fm["segm_mAP_50"]:.3f} |', '',
        f'Target: bbox mAP >= {TARGET_BBOX_MAP}: **{"met" if m["bbox_mAP"] >= TARGET_BBOX_MAP else "missed"}**.', '',
        '## Detections on val images', '',
        f'The first {len(report["detections"]["images"])} val images: ground truth, the trained detector\'s '
        f'detections and the fused detector\'s (score >= {report["detections"]["score_thr"]:g}), drawn by mmdet\'s '
        'DetLocalVisualizer.', '', '![detections](detections.png)', '',
        '## Training', '', '![loss and g](training.png)', '',
        '## Fusion', '',
        f'{fusion["removed_norms"]} norm layers removed from the backbone; output norms {fusion["output_norms"]}. '
        f'Fused vs unfused on a val image: largest feature difference {fusion["features"]:.2e} (relative); '
        f'{_describe_detection_diff(fusion["detections"])}.', '',
        '## Latency of the whole detectors at mini-COCO size (batch 1, interleaved)', '',
        'The first row is the twin (LayerNorm + softmax, random weights), the reference of the ratios; the '
        'unfused and fused models are the trained ones; the twin has random '
        'weights (latency does not depend on the values; every model keeps its 100 best detections). '
        'At this size (320x256) the mini RoI heads are most of the time, which hides the backbones: '
        'see the COCO-resolution table above for them.', '',
        '![latency](benchmark/latency.png)', '', latency_md, '',
        '## Time per step', '', '| step | seconds |', '|---|---:|',
        *[f'| {name} | {sec:.0f} |' for name, sec in report['step_seconds'].items()],
        f'| **total** | **{report["total_seconds"]:.0f}** |', '']
    return '\n'.join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out-dir', default='work_dirs/demo', help='report and artefacts (default: work_dirs/demo)')
    parser.add_argument('--data-root', default='data/mini_coco', help='mini COCO location (default: data/mini_coco)')
    parser.add_argument('--config', default=osp.join(REPO_ROOT, 'configs/mini/mask_rcnn_slab_pvt_t.py'),
                        help='the model to train (default: configs/mini/mask_rcnn_slab_pvt_t.py)')
    parser.add_argument('--baseline', default=osp.join(REPO_ROOT, 'configs/mini/mask_rcnn_pvt_t.py'),
                        help='the LayerNorm baseline of the latency comparisons (with its backbone replaced by '
                             "mmdet's PVTv2-b1, also the efficient peer of the COCO-resolution one)")
    # Defaults sized so that `make demo` stays under 12 minutes on 2 cores.
    parser.add_argument('--num-images', type=int, default=10,
                        help='timed images per model, detectors at mini-COCO size (default: 10)')
    parser.add_argument('--coco-size-images', type=int, default=3,
                        help='timed images per model, backbones at COCO test resolution (default: 3)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed images per model (default: 1)')
    parser.add_argument('--threads', type=int, default=None, help='torch threads for the benchmark')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override settings of --config')
    args = parser.parse_args(argv)
    for path in (args.config, args.baseline):
        if not osp.isfile(path):
            parser.error(f'config not found: {path}')
    if args.num_images < 1 or args.coco_size_images < 1 or args.warmup < 0:
        parser.error(f'--num-images and --coco-size-images must be >= 1 and --warmup >= 0, got '
                     f'{args.num_images}, {args.coco_size_images} and {args.warmup}')
    return args


def main(argv=None):
    args = parse_args(argv)
    run_demo(args.out_dir, args.data_root, args.config, args.baseline, args.num_images, args.warmup, args.threads,
             args.cfg_options, coco_size_images=args.coco_size_images)


if __name__ == '__main__':
    main()
