"""The study's latency columns (issue #41 item 4, issue #38 item 1): each row's trained
detector (one seed's checkpoint from run.py's work dirs), fused where it has norms to fold,
timed against its family's trained LayerNorm twin, the backbone and the whole Mask R-CNN, at
COCO test resolution (the test Resize set to 1333x800: 800x1067-class inputs from mini COCO
val), batch 1, interleaved image by image, paired per-image ratios.

Trained weights, because with random weights the detectors keep different boxes and the heads'
per-box work (the RoI heads, mask pasting: most of the detector's time) differs from model to
model by more than the backbones do (docs/benchmarks.md: random-weight detector ratios moved by
up to 0.24 between runs). Every detector keeps its 100 best detections (score_thr = 0). These
are the study's detectors: the backbone as shipped, the heads narrowed for the CPU (128
channels, see configs/_base_/mini_cpu.py), so the heads' share of the time is smaller than
in a COCO Mask R-CNN. The backbone is timed in the same pass (its part of the breakdown).

    python benchmarks/table3_mini/latency.py --run 3 --threads 2 --num-images 40 --warmup 2
    python benchmarks/table3_mini/latency.py --run 4 --threads 2 --num-images 40 --warmup 2

Writes ``<results>/latency/run<N>/<family>.{md,json,png}`` and ``<results>/latency/run<N>.json``
({row: backbone and detector paired ratio to the twin}), which report.py reads. Run it on a
quiet machine (no training, no test suite beside it), twice: the two runs should agree (40
images per run agreed within 0.03 on 2026-12-06; 20 images parted by up to 0.06).
"""
import argparse
import os
import os.path as osp
import sys

# Run as a script, this folder is sys.path[0], so its run.py is the 'run' imported here.
from run import RESULTS, ROOT, ROWS, WORK
from slab_mmdet.apis import write_json  # noqa: E402 (run.py puts the checkout on sys.path)

# family -> [(row, fuse mode)], the twin first (the reference of the ratios).
FAMILIES = {
    'pvt_t': [('pvt_t_twin', 'none'), ('pvt_t_prepbn', 'yes'), ('slab_pvt_t', 'yes'),
              ('slab_pvt_t_repbn', 'yes'), ('slab_pvt_t_ln', 'none'), ('slab_pvt_t_dyt', 'yes')],
    'swin_t': [('swin_t_twin', 'none'), ('swin_t_prepbn', 'yes'), ('slab_swin_t', 'yes')],
}
LATENCY_DIR = osp.join(RESULTS, 'latency')


def trained_checkpoint(work_root, row, seed):
    """The checkpoint a finished run.py training left: its work dir's ``last_checkpoint``."""
    marker = osp.join(work_root, f'{row}_s{seed}', 'last_checkpoint')
    if not osp.isfile(marker):
        raise SystemExit(f'no trained checkpoint for {row} seed {seed}: {marker} does not exist '
                         f'(train it with: python benchmarks/table3_mini/run.py --rows {row} --seeds {seed})')
    with open(marker) as f:
        path = f.read().strip()
    if not osp.isfile(path):
        raise SystemExit(f'{marker} names {path}, which does not exist')
    return path


def row_ratios(summary, rows):
    """{row: {'backbone': paired ratio, 'detector': paired ratio}} against the first model, from
    one detector benchmark summary whose models are ``rows`` in order (breakdown in the same pass)."""
    from slab_mmdet.benchmark.report import paired_ratio
    models = summary['models']
    reference = models[0]['raw']
    out = {}
    for row, m in zip(rows, models):
        out[row] = dict(
            fused=m['fused'], detector_ms=m['latency_ms']['mean'],
            backbone_ms=m['breakdown_ms']['backbone'],
            detector=m['ratio_to_first']['paired'],
            backbone=paired_ratio(m['raw']['breakdown_ms']['backbone'], reference['breakdown_ms']['backbone']))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--run', type=int, required=True, help='run number (1, 2, ...): names the output')
    parser.add_argument('--seed', type=int, default=0, help="whose trained checkpoints (default: 0)")
    parser.add_argument('--families', nargs='+', default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--num-images', type=int, default=40)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--images', default=osp.join(ROOT, 'data', 'mini_coco', 'val'))
    parser.add_argument('--work-root', default=WORK, help='run.py work dirs (default: %(default)s)')
    parser.add_argument('--out', default=LATENCY_DIR, help='default: %(default)s')
    args = parser.parse_args(argv)
    if args.run < 1:
        parser.error(f'--run must be >= 1, got {args.run}')
    import torch
    from slab_mmdet.benchmark import (FUSED_SUFFIX, coco_test_options, load_models, resolve_images,
                                      time_detectors_with_backbones)

    torch.set_num_threads(args.threads)
    checkpoints = {row: trained_checkpoint(args.work_root, row, args.seed)
                   for family in args.families for row, _ in FAMILIES[family]}   # all found before any timing
    command = 'python ' + ' '.join([osp.relpath(__file__, ROOT)] + (argv if argv is not None else sys.argv[1:]))
    run_dir = osp.join(args.out, f'run{args.run}')
    os.makedirs(run_dir, exist_ok=True)
    record = dict(command=command, seed=args.seed, rows={})
    for family in args.families:
        print(f'\n=== {family}: trained seed {args.seed}, whole detector with the backbone in the same pass ===',
              flush=True)
        rows = [row for row, _ in FAMILIES[family]]
        models = []
        for row, fuse in FAMILIES[family]:
            config = ROWS[row][0]
            loaded = load_models([config], [checkpoints[row]], fuse=fuse, cfg_options=coco_test_options(config))
            loaded[0].name = row + (FUSED_SUFFIX if loaded[0].fused else '')
            models += loaded
        images = resolve_images(None, args.num_images, images_dir=args.images)
        summary = time_detectors_with_backbones(models, images, args.warmup, command, run_dir, family)
        record['machine'] = summary['machine']
        record['input_hw'] = list(models[0].padded_input_hw(images.paths[0]))
        record['rows'].update(row_ratios(summary, rows))
        write_json(osp.join(args.out, f'run{args.run}.json'), record)   # after every family: kept if cut
    for row, r in record['rows'].items():
        print(f"{row:18s} backbone {r['backbone']['median']:.3f} ({r['backbone']['p10']:.2f}-"
              f"{r['backbone']['p90']:.2f})  detector {r['detector']['median']:.3f} "
              f"({r['detector']['p10']:.2f}-{r['detector']['p90']:.2f})")


if __name__ == '__main__':
    main()
