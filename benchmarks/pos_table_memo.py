"""What resizing each positional table once per grid buys (issue #40; ``ResizedPosTable`` in
slab_mmdet/models/layers/transformer.py): SLAB-PVT fused and its LayerNorm + softmax twin,
each as it runs by default (the tables memoised) and remaking every table at every forward
(the 'before'), their backbones timed side by side, batch 1, random weights (PRepBN at g = 0),
interleaved image by image with the order rotated, freed memory reused.

Two streams of inputs: ``fixed``, one mini COCO val image repeated (a camera or a video at
one size: every forward after the first finds its tables made), and ``coco``, the first
``--num-images`` mini COCO val images, whose padded sizes rarely repeat from one image to
the next (the memo is remade at nearly every forward: what it costs when it cannot help).

    python benchmarks/pos_table_memo.py --run 1 --threads 2 --num-images 16 --warmup 2

Writes ``<out>/run<N>/<family>_<stream>.{md,json,png}`` and ``<out>/run<N>.json``.
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
}
STREAMS = ('fixed', 'coco')
REMADE_SUFFIX = '+remade'
# (name, numerator, denominator) by position in the model list: twin, SLAB, twin remade, SLAB remade.
RATIOS = [('slab_vs_twin', 1, 0), ('slab_vs_twin_remade', 3, 2), ('twin_memo_vs_remade', 0, 2),
          ('slab_memo_vs_remade', 1, 3)]


def remade_variant(bench_model):
    """A copy of ``bench_model`` whose positional tables are resized at every forward."""
    from slab_mmdet.models.layers.transformer import ResizedPosTable, resize_pos_table

    class RemadeEveryForward(ResizedPosTable):
        def __call__(self, make_table, sources, src_hw, dst_hw):
            return resize_pos_table(make_table(), src_hw, dst_hw), False

    model = copy.deepcopy(bench_model.model)
    replaced = 0
    for module in model.modules():
        for name, value in list(vars(module).items()):
            if isinstance(value, ResizedPosTable):
                setattr(module, name, RemadeEveryForward())
                replaced += 1
    if not replaced:
        raise SystemExit(f'{bench_model.name}: no ResizedPosTable to replace')
    return dataclasses.replace(bench_model, name=bench_model.name + REMADE_SUFFIX, model=model)


def stream_images(stream, num_images, images_dir):
    from slab_mmdet.benchmark import resolve_images
    from slab_mmdet.benchmark.images import ImageSet
    images = resolve_images(None, num_images, images_dir=images_dir)
    if stream == 'fixed':
        return ImageSet([images.paths[0]] * num_images, f'{images.paths[0]}, repeated', 1)
    return images


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--run', type=int, required=True, help='run number (1, 2, ...): names the output')
    parser.add_argument('--families', nargs='+', default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument('--streams', nargs='+', default=list(STREAMS), choices=STREAMS)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--num-images', type=int, default=16)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--images', default=osp.join(REPO, 'data', 'mini_coco', 'val'))
    parser.add_argument('--out', default=osp.join(REPO, 'benchmarks', 'results', 'pos_table_memo'),
                        help='default: %(default)s')
    args = parser.parse_args(argv)
    if args.run < 1:
        parser.error(f'--run must be >= 1, got {args.run}')
    import torch
    from slab_mmdet.apis import write_json
    from slab_mmdet.benchmark import benchmark_backbones, coco_test_options, load_models, set_cpu_allocator
    from slab_mmdet.benchmark.report import paired_ratio, summarize_result, write_report

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    set_cpu_allocator('reuse')
    command = command_line(__file__, argv)
    run_dir = osp.join(args.out, f'run{args.run}')
    os.makedirs(run_dir, exist_ok=True)
    record = dict(command=command, results={})
    for family in args.families:
        memoised = []
        for config, fuse in zip(FAMILIES[family], ('none', 'yes')):
            path = osp.join(REPO, config)
            memoised += load_models([path], fuse=fuse, cfg_options=coco_test_options(path), log=None)
        models = memoised + [remade_variant(m) for m in memoised]
        for stream in args.streams:
            print(f'\n=== {family}, {stream} inputs: twin and SLAB fused, tables memoised and remade ===', flush=True)
            images = stream_images(stream, args.num_images, args.images)
            result = benchmark_backbones(models, images, warmup=args.warmup, memory=False)
            summary = summarize_result(result)
            summary['command'] = command
            write_report(summary, run_dir, stem=f'{family}_{stream}')
            raw = [m['raw']['total_ms'] for m in summary['models']]
            record['machine'] = summary['machine']
            record['results'][f'{family}_{stream}'] = dict(
                input_hw=[list(models[0].padded_input_hw(p)) for p in images.paths[:3]],
                models=[dict(name=m['name'], backbone_ms=m['latency_ms']['median']) for m in summary['models']],
                ratios={name: paired_ratio(raw[a], raw[b]) for name, a, b in RATIOS})
            write_json(osp.join(args.out, f'run{args.run}.json'), record)   # after every part: kept if cut
            for name, r in record['results'][f'{family}_{stream}']['ratios'].items():
                print(f"{family} {stream:5s} {name:22s} {r['median']:.3f} ({r['p10']:.2f}-{r['p90']:.2f})", flush=True)


if __name__ == '__main__':
    main()
