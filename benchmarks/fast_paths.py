"""What the inference fast paths buy (issue #40 item 2; slab_mmdet/models/layers/fast_paths.py):
SLAB fused and its LayerNorm + softmax twin, each with the fast paths on (the default) and off
(``plain_inference()``: the whole-tensor code, the 'before'), timed side by side: the whole
Mask R-CNN with its backbone in the same pass, batch 1, random weights (PRepBN at g = 0),
every detector keeping its 100 best detections (score_thr = 0), mini COCO val images through
the COCO test Resize (1333x800: 800x1067-class inputs), interleaved image by image with the
order rotated.

The ratios are medians of per-image ratios: SLAB / twin with both running their fastest code
(after) and with both plain (before), and each model's fast / plain.

    python benchmarks/fast_paths.py --run 3 --threads 2 --num-images 12 --warmup 2

Writes ``<out>/run<N>/<family>.{md,json,png}`` and ``<out>/run<N>.json``; run it on a quiet
machine, twice, and compare the two runs.
"""
import argparse
import copy
import dataclasses
import os
import os.path as osp

from bootstrap import REPO, command_line

# family -> (twin config, SLAB config); the SLAB model is fused.
FAMILIES = {
    'pvt_s': ('configs/mask_rcnn_pvt_s_twin.py', 'configs/mask_rcnn_slab_pvt_s.py'),
    'pvt_t': ('configs/mask_rcnn_pvt_t_twin.py', 'configs/mask_rcnn_slab_pvt_t.py'),
    'swin_t': ('configs/mask_rcnn_swin_t_twin.py', 'configs/mask_rcnn_slab_swin_t.py'),
}
PLAIN_SUFFIX = '+plain'
# (name, numerator, denominator) of the reported ratios, by position in the benchmark's model list:
# twin blocked, SLAB blocked, twin plain, SLAB plain.
RATIOS = [('slab_vs_twin', 1, 0), ('slab_vs_twin_plain', 3, 2), ('twin_blocked_vs_plain', 0, 2),
          ('slab_blocked_vs_plain', 1, 3)]


def plain_variant(bench_model):
    """A copy of ``bench_model`` whose backbone always runs inside ``plain_inference()`` (the
    fast paths live in the backbone's layers only)."""
    from slab_mmdet.models.layers.fast_paths import plain_inference
    model = copy.deepcopy(bench_model.model)
    blocked_forward = model.backbone.forward

    def plain_forward(*args, **kwargs):
        with plain_inference():
            return blocked_forward(*args, **kwargs)

    model.backbone.forward = plain_forward
    return dataclasses.replace(bench_model, name=bench_model.name + PLAIN_SUFFIX, model=model)


def family_ratios(summary):
    """{ratio name: {'backbone': paired, 'detector': paired}} from a summary of the four models."""
    from slab_mmdet.benchmark.report import paired_ratio
    raw = [m['raw'] for m in summary['models']]
    return {name: dict(backbone=paired_ratio(raw[a]['breakdown_ms']['backbone'], raw[b]['breakdown_ms']['backbone']),
                       detector=paired_ratio(raw[a]['total_ms'], raw[b]['total_ms']))
            for name, a, b in RATIOS}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--run', type=int, required=True, help='run number (1, 2, ...): names the output')
    parser.add_argument('--families', nargs='+', default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--num-images', type=int, default=16)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--images', default=osp.join(REPO, 'data', 'mini_coco', 'val'))
    parser.add_argument('--out', default=osp.join(REPO, 'benchmarks', 'results', 'fast_paths'),
                        help='default: %(default)s')
    args = parser.parse_args(argv)
    if args.run < 1:
        parser.error(f'--run must be >= 1, got {args.run}')
    import torch
    from slab_mmdet.apis import write_json
    from slab_mmdet.benchmark import coco_test_options, load_models, resolve_images, time_detectors_with_backbones

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    command = command_line(__file__, argv)
    run_dir = osp.join(args.out, f'run{args.run}')
    os.makedirs(run_dir, exist_ok=True)
    record = dict(command=command, families={})
    images = resolve_images(None, args.num_images, images_dir=args.images)
    for family in args.families:
        print(f'\n=== {family}: twin and SLAB fused, fast paths on and off ===', flush=True)
        blocked = []
        for config, fuse in zip(FAMILIES[family], ('none', 'yes')):
            path = osp.join(REPO, config)
            blocked += load_models([path], fuse=fuse, cfg_options=coco_test_options(path))
        models = blocked + [plain_variant(m) for m in blocked]
        summary = time_detectors_with_backbones(models, images, args.warmup, command, run_dir, family)
        record['machine'] = summary['machine']
        record['input_hw'] = list(models[0].padded_input_hw(images.paths[0]))
        record['families'][family] = dict(
            models=[dict(name=m['name'], detector_ms=m['latency_ms']['median'],
                         backbone_ms=m['breakdown_ms']['backbone']) for m in summary['models']],
            ratios=family_ratios(summary))
        write_json(osp.join(args.out, f'run{args.run}.json'), record)   # after every family: kept if cut
        for name, r in record['families'][family]['ratios'].items():
            print(f"{family} {name:24s} backbone {r['backbone']['median']:.3f} ({r['backbone']['p10']:.2f}-"
                  f"{r['backbone']['p90']:.2f})  detector {r['detector']['median']:.3f} "
                  f"({r['detector']['p10']:.2f}-{r['detector']['p90']:.2f})", flush=True)


if __name__ == '__main__':
    main()
