"""Backbone latency, peak memory and FLOPs against input size (issues #13 item 3, #38 item 4):
SLAB-PVT-S fused against its LayerNorm + softmax twin and timm's PVTv2-b2, SLAB-Swin-T fused
against its twin, batch 1, at several short sides.

At each short side every model is timed in one interleaved run (slab_mmdet.benchmark,
image by image, order rotated per image) on mini COCO val images through the COCO test
pipeline with its Resize bound scaled to that short side ((1333, 800) at 800, keep ratio),
followed by a memory pass (peak RSS growth of one forward). SLAB models are fused; weights
are random (PRepBN at g = 0). Each family's ratios are to its twin, paired per image; the
FLOPs ratio at the first image's size (mmengine's counter with SDPA counted, as
model_complexity.py) stands beside the measured one. PVT's spatial-reduction attention costs
N * N / R^2 per stage and SLA N, so the PVT gap should widen with the input; Swin's windows
are linear in N already, so its gap should stay about constant.

    python benchmarks/latency_vs_size.py --threads 2 --num-images 3 --warmup 1

Writes <out-dir>/latency_vs_size.{md,json,png} and prints the Markdown table.
"""
import argparse
import json
import os
import os.path as osp

from bootstrap import REPO, command_line
SHORT_SIDES = (512, 800, 1024, 1333, 2048)
# family -> [(display name, config, fuse mode, timm peer replacing the backbone or None)];
# the first of a family (its twin) is the reference of its ratios.
FAMILIES = {
    'PVT-S': [('PVT-S twin', 'configs/mask_rcnn_pvt_s_twin.py', 'none', None),
              ('SLAB-PVT-S (fused)', 'configs/mask_rcnn_slab_pvt_s.py', 'yes', None),
              ('PVTv2-b2 (timm)', 'configs/mask_rcnn_pvt_s.py', 'none', 'pvt_v2_b2')],
    'Swin-T': [('Swin-T twin', 'configs/mask_rcnn_swin_t_twin.py', 'none', None),
               ('SLAB-Swin-T (fused)', 'configs/mask_rcnn_slab_swin_t.py', 'yes', None)],
}


def resize_bound(short_side):
    """The test Resize scale for ``short_side``: mmdet's (1333, 800) scaled."""
    return (round(short_side * 1333 / 800), short_side)


def load_family_models(device):
    """Every model of FAMILIES once, as {name: BenchModel}."""
    from slab_mmdet.benchmark import FIXED_DETECTIONS, load_models
    from slab_mmdet.benchmark.peers import timm_peer_options
    models = {}
    for family in FAMILIES.values():
        for name, config, fuse, peer in family:
            options = {**FIXED_DETECTIONS, **({'model': timm_peer_options(peer)} if peer else {})}
            loaded = load_models([osp.join(REPO, config)], fuse=fuse, device=device, cfg_options=options)
            models[name] = loaded[-1]
            models[name].name = name
    return models


def set_input_size(models, short_side):
    """Point every model's test pipeline at ``short_side`` (the models themselves do not change)."""
    from slab_mmdet.benchmark import inference_pipeline, load_config, resized_test_pipeline_options
    for m in models:
        cfg = load_config(m.config)
        cfg.merge_from_dict(resized_test_pipeline_options(cfg, resize_bound(short_side)))
        m.pipeline = inference_pipeline(cfg)


def backbone_gflops(model, input_hw):
    """The backbone's GFLOPs on one (1, 3, H, W) input (model_complexity.py's counter)."""
    import torch
    from model_complexity import flops  # a sibling script: benchmarks/ is sys.path[0] when run
    with torch.no_grad():
        return flops(model.model.backbone, (torch.zeros(1, 3, *input_hw),))[1] / 1e9


def render_table(record):
    """Markdown: one row per (short side, model), with the ratios to its family's twin."""
    lines = ['| short side | input (padded) | model | mean (ms) | paired ratio to twin (p10-p90) | FLOPs ratio | '
             'GFLOPs | peak mem (MiB) |', '|---:|---|---|---:|---:|---:|---:|---:|']
    for row in record['rows']:
        p = row['paired']
        lines.append(f"| {row['short_side']} | {row['input_hw'][0]}x{row['input_hw'][1]} | {row['model']} | "
                     f"{row['mean_ms']:.0f} | {p['median']:.2f} ({p['p10']:.2f}-{p['p90']:.2f}) | "
                     f"{row['flops_ratio']:.2f} | {row['gflops']:.1f} | "
                     f"{'–' if row['peak_mib'] is None else format(row['peak_mib'], '.0f')} |")
    return '\n'.join(lines)


def plot(record, path):
    """Two panels: latency against input pixels (log-log) and the ratio to the family reference."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 4.2), layout='constrained')
    FigureCanvasAgg(fig)
    ax_ms, ax_ratio = fig.subplots(1, 2)
    for family, members in FAMILIES.items():
        for i, (name, *_) in enumerate(members):
            rows = [r for r in record['rows'] if r['model'] == name]
            mpix = [r['input_hw'][0] * r['input_hw'][1] / 1e6 for r in rows]
            style = '-o' if family == 'PVT-S' else '--s'
            ax_ms.plot(mpix, [r['mean_ms'] for r in rows], style, label=name)
            if i:
                sides = [r['short_side'] for r in rows]
                line, = ax_ratio.plot(sides, [r['paired']['median'] for r in rows], style,
                                      label=f'{name} / {members[0][0]}')
                ax_ratio.plot(sides, [r['flops_ratio'] for r in rows], ':', color=line.get_color(),
                              label=f'{name}: FLOPs ratio')
    ax_ms.set(xscale='log', yscale='log', xlabel='input pixels (millions, padded)', ylabel='backbone mean (ms)',
              title='batch-1 backbone latency')
    ax_ratio.axhline(1.0, color='grey', lw=0.8)
    ax_ratio.set(xlabel='short side (px)', ylabel='latency ratio', title='ratio to the LayerNorm/softmax model',
                 xticks=SHORT_SIDES)
    for ax in (ax_ms, ax_ratio):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)


def main(argv=None):
    from slab_mmdet.benchmark.allocator import CPU_ALLOCATOR_MODES
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--num-images', type=int, default=3, help='timed images per model and size')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--short-sides', type=int, nargs='+', default=list(SHORT_SIDES))
    parser.add_argument('--images', default=osp.join(REPO, 'data', 'mini_coco', 'val'),
                        help='image folder (default: mini COCO val; make it with tools/make_mini_coco.py)')
    parser.add_argument('--cpu-allocator', choices=CPU_ALLOCATOR_MODES, default='reuse',
                        help="how the C allocator treats freed memory (slab_mmdet.benchmark.allocator): reuse "
                             "(default) or glibc's default, system")
    parser.add_argument('--out-dir', default=osp.join(REPO, 'work_dirs', 'benchmarks', 'latency_vs_size'))
    args = parser.parse_args(argv)
    bad = [s for s in args.short_sides if s < 32]
    if bad:
        parser.error(f"--short-sides {bad}: a short side must be at least 32 pixels (the backbones' stride)")
    import torch
    from slab_mmdet.apis import load_config
    from slab_mmdet.benchmark import benchmark_backbones, resolve_images, set_cpu_allocator
    from slab_mmdet.benchmark.report import machine_facts, paired_ratio, summarize_result

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == 'cpu':
        set_cpu_allocator(args.cpu_allocator)
    os.makedirs(args.out_dir, exist_ok=True)
    command = command_line(__file__, argv)
    models = load_family_models(args.device)
    images = resolve_images(load_config(osp.join(REPO, FAMILIES['PVT-S'][0][1])), args.num_images,
                            images_dir=args.images)
    record = dict(machine=machine_facts(args.device, command), num_images=args.num_images, warmup=args.warmup,
                  rows=[])
    for short_side in args.short_sides:
        print(f'\n=== short side {short_side} (Resize bound {resize_bound(short_side)}) ===', flush=True)
        set_input_size(models.values(), short_side)
        order = list(models.values())
        summary = summarize_result(benchmark_backbones(order, images, warmup=args.warmup))
        by_name = {m['name']: m for m in summary['models']}
        input_hw = order[0].padded_input_hw(images.paths[0])
        for family in FAMILIES.values():
            reference = by_name[family[0][0]]['raw']['total_ms']
            gflops = {name: backbone_gflops(models[name], input_hw) for name, *_ in family}
            for name, *_ in family:
                stats = by_name[name]['latency_ms']
                record['rows'].append(dict(
                    short_side=short_side, input_hw=input_hw, model=name, mean_ms=stats['mean'],
                    median_ms=stats['median'], paired=paired_ratio(by_name[name]['raw']['total_ms'], reference),
                    gflops=gflops[name], flops_ratio=gflops[name] / gflops[family[0][0]],
                    peak_mib=by_name[name]['memory']['peak_forward_mib'], raw_ms=by_name[name]['raw']['total_ms']))
        print(render_table(dict(rows=record['rows'][-len(models):])), flush=True)
    with open(osp.join(args.out_dir, 'latency_vs_size.json'), 'w') as f:
        json.dump(record, f, indent=1)
    table = render_table(record)
    with open(osp.join(args.out_dir, 'latency_vs_size.md'), 'w') as f:
        m = record['machine']
        f.write(f"# Backbone latency against input size\n\n{m['date']}, {m['device_name']}, {m['threads']} threads, "
                f"torch {m['torch']}, mmdet {m['mmdet']}; `{m['command']}`; {args.num_images} images per model "
                f"and size, {args.warmup} warm-up, interleaved.\n\n{table}\n")
    plot(record, osp.join(args.out_dir, 'latency_vs_size.png'))
    print('\n' + table)
    print(f'wrote {args.out_dir}/latency_vs_size.{{md,json,png}}')


if __name__ == '__main__':
    main()
