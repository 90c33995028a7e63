"""Where a backbone's inference time goes: per module kind and per operator.

Builds the backbone of each CONFIG (random weights; PRepBN finished as in the latency
benchmark: g = 0, alpha = 0), optionally fuses it, and runs it at batch 1 on a
preprocessed mini COCO val image through the config's test pipeline (800x1333-class
for the COCO configs). Reports, per model:

* inclusive time per module kind (forward hooks; kinds nest, e.g. the value conv is
  inside the window attention), summed over the timed runs, as ms per image;
* the top operators by self CPU time (torch.profiler).

    python benchmarks/profile_backbone.py configs/mask_rcnn_slab_swin_t.py configs/mask_rcnn_swin_t.py \
        --fuse --threads 2 --runs 3
"""
import argparse
import collections
import os.path as osp
import time

from bootstrap import REPO


def module_kind_timer(model):
    """Adds forward hooks that sum each module class's inclusive wall time; returns the dict
    and the hook handles."""
    totals = collections.defaultdict(float)
    handles = []
    starts = {}

    def pre(module, args):
        starts[id(module)] = time.perf_counter()

    def post(module, args, output):
        totals[type(module).__name__] += time.perf_counter() - starts.pop(id(module))

    for m in model.modules():
        if m is not model:
            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    return totals, handles


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('configs', nargs='+')
    parser.add_argument('--fuse', action='store_true', help='fuse the models that can be fused')
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--runs', type=int, default=3, help='timed runs (after one warm-up)')
    parser.add_argument('--top', type=int, default=12, help='operators to list')
    parser.add_argument('--images', default=osp.join(REPO, 'data', 'mini_coco', 'val'))
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f'--runs must be >= 1, got {args.runs}')
    import torch
    from torch.profiler import ProfilerActivity, profile

    from slab_mmdet.benchmark import BenchmarkError, load_models
    from slab_mmdet.benchmark.images import list_image_dir
    if args.threads:
        torch.set_num_threads(args.threads)
    image = list_image_dir(args.images)[0]
    for config in args.configs:
        try:
            bench_model = load_models([config], fuse='yes' if args.fuse else 'none', log=None)[0]
        except BenchmarkError as e:   # --fuse on a model that cannot be fused
            print(f'{config}: {e}; profiled unfused')
            bench_model = load_models([config], log=None)[0]
        inputs = bench_model.prepare(image)['inputs']
        backbone = bench_model.model.backbone
        with torch.inference_mode():
            backbone(inputs)   # warm-up
            totals, handles = module_kind_timer(backbone)
            start = time.perf_counter()
            for _ in range(args.runs):
                backbone(inputs)
            wall = (time.perf_counter() - start) / args.runs * 1e3
        for handle in handles:
            handle.remove()
        totals = {k: v / args.runs * 1e3 for k, v in totals.items()}
        print(f'\n## {bench_model.name}: backbone {wall:.0f} ms per image at {tuple(inputs.shape[-2:])} '
              f'(with hooks)\n\n| module kind (inclusive) | ms per image | share |\n|---|---:|---:|')
        for kind, ms in sorted(totals.items(), key=lambda kv: -kv[1])[:args.top]:
            print(f'| {kind} | {ms:.0f} | {ms / wall:.0%} |')
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
            backbone(inputs)
        print(f'\n{prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top)}')


if __name__ == '__main__':
    main()
