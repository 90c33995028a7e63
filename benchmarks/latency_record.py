"""The latency record of docs/benchmarks.md: SLAB models vs their LayerNorm baselines,
fused vs unfused vs the norm-deleted floor, batch 1, measured side by side.

Each comparison is one interleaved run of slab_mmdet.benchmark (image by image, the order
rotated per image), on the mini COCO val images through each config's COCO test pipeline
(Resize to 1333x800, so 800x1067 inputs: the 800x1333 class). Weights are random (PRepBN
at g = 0, the state training ends in); so that every detector does the same head work,
the RoI head keeps its 100 best detections whatever their scores (score_thr = 0), and every
detector's heads, after computing their own predictions, continue with the first model's
proposals and detections (recorded in an untimed pass; --own-boxes turns this off): random
weights find different boxes, and the mask head's pasting cost follows the boxes' areas.
Besides the configs themselves, a comparison can hold generated variants of a config
(VARIANTS): its norm layers deleted (the floor fusion can reach), its PRepBN replaced
by LayerNorm (the same code as a LayerNorm model), or its backbone replaced by mmdet's
PVTv2-b1/b2 (the efficient peers, in the pvt_*_peers comparisons).

    python benchmarks/latency_record.py --device cpu --threads 2 --num-images 5 --warmup 1
    python benchmarks/latency_record.py --device cpu --threads 2 --num-images 15 --warmup 2 \
        --only slab_pvt_s_fusion_backbone slab_swin_t_fusion_backbone
    python benchmarks/latency_record.py --device cuda --num-images 100 --warmup 10
    # the twin record of docs/benchmarks.md (run twice):
    python benchmarks/latency_record.py --threads 2 --num-images 20 --warmup 2 --no-memory --only \
        pvt_t_twin_backbone pvt_s_twin_backbone swin_t_twin_backbone pvt_s_prepbn_twin_backbone \
        pvt_t_twin_mask_rcnn pvt_s_twin_mask_rcnn swin_t_twin_mask_rcnn pvt_s_prepbn_twin_mask_rcnn

Writes <out-dir>/<comparison>.{md,json,png} and prints the Markdown tables.
"""
import argparse
import json
import os
import os.path as osp

from bootstrap import REPO, command_line
from slab_mmdet.benchmark.allocator import CPU_ALLOCATOR_MODES
from slab_mmdet.benchmark.peers import PVTV2_BACKBONES, TIMM_PEERS, timm_peer_options


def baseline_vs_slab(baseline, slab):
    """[(config, fuse mode)]: the LayerNorm baseline (the reference of the ratios), the SLAB
    model unfused and fused, and the SLAB model with its norms deleted."""
    return [(baseline, 'none'), (slab, 'both'), (f'floor:{slab}', 'none')]


def fusion_vs_floor(slab):
    """[(config, fuse mode)]: the SLAB model unfused and fused, and with its norms deleted."""
    return [(slab, 'both'), (f'floor:{slab}', 'none')]


def pvt_peers(pvt, slab, pvtv2):
    """[(config, fuse mode)]: mmdet's PVT (the reference), the SLAB model fused, mmdet's PVTv2."""
    return [(pvt, 'none'), (slab, 'yes'), (f'{pvtv2}:{pvt}', 'none')]


def twin_vs_slab(twin, slab, *peers):
    """[(config, fuse mode)]: the LayerNorm + softmax twin in this code (the reference: what
    SLAB itself buys), the SLAB model fused, then the fastest peers."""
    return [(twin, 'none'), (slab, 'yes')] + [(peer, 'none') for peer in peers]


PVT_T, SLAB_PVT_T = 'configs/mask_rcnn_pvt_t.py', 'configs/mask_rcnn_slab_pvt_t.py'
PVT_T_TWIN, PVT_S_TWIN = 'configs/mask_rcnn_pvt_t_twin.py', 'configs/mask_rcnn_pvt_s_twin.py'
SWIN_T_TWIN = 'configs/mask_rcnn_swin_t_twin.py'
PVT_S, SLAB_PVT_S = 'configs/mask_rcnn_pvt_s.py', 'configs/mask_rcnn_slab_pvt_s.py'
PVT_S_PREPBN = 'configs/mask_rcnn_pvt_s_prepbn.py'
PVT_T_PEERS = (f'timm_pvt_v2_b1:{PVT_T}', f'timm_efficientvit_b2:{PVT_T}')
PVT_S_PEERS = (f'timm_pvt_v2_b2:{PVT_S}', f'timm_efficientvit_b3:{PVT_S}')
SWIN_T, SLAB_SWIN_T = 'configs/mask_rcnn_swin_t.py', 'configs/mask_rcnn_slab_swin_t.py'
# name -> (what is timed, [(config, fuse mode)]); a config 'kind:path' is a VARIANTS child.
COMPARISONS = {
    # Each SLAB model against its twin (same code, LayerNorm + softmax SDPA attention) and the
    # fastest implementation of its peer (timm's PVTv2, SDPA); mmdet's own model last.
    # timm's EfficientViT (BatchNorm + ReLU linear attention) is the deployment-minded peer.
    'pvt_t_twin_backbone': ('backbone', twin_vs_slab(PVT_T_TWIN, SLAB_PVT_T, *PVT_T_PEERS, PVT_T)),
    'pvt_s_twin_backbone': ('backbone', twin_vs_slab(PVT_S_TWIN, SLAB_PVT_S, *PVT_S_PEERS, PVT_S)),
    'swin_t_twin_backbone': ('backbone', twin_vs_slab(SWIN_T_TWIN, SLAB_SWIN_T, SWIN_T)),
    'pvt_t_twin_mask_rcnn': ('detector', twin_vs_slab(PVT_T_TWIN, SLAB_PVT_T, PVT_T_PEERS[0])),
    'pvt_s_twin_mask_rcnn': ('detector', twin_vs_slab(PVT_S_TWIN, SLAB_PVT_S, PVT_S_PEERS[0])),
    'swin_t_twin_mask_rcnn': ('detector', twin_vs_slab(SWIN_T_TWIN, SLAB_SWIN_T, SWIN_T)),
    # The paper's norm-only row (PVT-S 64.0 -> 59.6 ms): PVT-S-PRepBN fused against its LayerNorm twin.
    'pvt_s_prepbn_twin_backbone': ('backbone', twin_vs_slab(PVT_S_TWIN, PVT_S_PREPBN)),
    'pvt_s_prepbn_twin_mask_rcnn': ('detector', twin_vs_slab(PVT_S_TWIN, PVT_S_PREPBN)),
    # DyT in place of SLAB-PVT-T's norms, fused (its tanh stays) beside SLAB fused, against the twin.
    'pvt_t_dyt_backbone': ('backbone', twin_vs_slab(PVT_T_TWIN, SLAB_PVT_T) + [(f'dyt:{SLAB_PVT_T}', 'yes')]),
    'pvt_t_dyt_mask_rcnn': ('detector', twin_vs_slab(PVT_T_TWIN, SLAB_PVT_T) + [(f'dyt:{SLAB_PVT_T}', 'yes')]),
    'pvt_s_backbone': ('backbone', baseline_vs_slab(PVT_S, SLAB_PVT_S)),
    'pvt_s_mask_rcnn': ('detector', baseline_vs_slab(PVT_S, SLAB_PVT_S)),
    # ln: the same backbone code with LayerNorm, to separate the norm's cost from the
    # attention implementation's (ours uses torch SDPA, mmdet's PVT nn.MultiheadAttention).
    'pvt_s_prepbn_mask_rcnn': ('detector', [(PVT_S, 'none'), (f'ln:{PVT_S_PREPBN}', 'none')]
                               + fusion_vs_floor(PVT_S_PREPBN)),
    'swin_t_backbone': ('backbone', baseline_vs_slab(SWIN_T, SLAB_SWIN_T)),
    # Fused vs unfused vs the floor alone, for more images than the comparisons above
    # afford (run with --only ... --num-images 15): the 2% question needs a tighter mean.
    'slab_pvt_s_fusion_backbone': ('backbone', fusion_vs_floor(SLAB_PVT_S)),
    'slab_swin_t_fusion_backbone': ('backbone', fusion_vs_floor(SLAB_SWIN_T)),
    'swin_t_mask_rcnn': ('detector', baseline_vs_slab(SWIN_T, SLAB_SWIN_T)),
    # The efficient peers: PVTv2-b1 beside the tiny models, PVTv2-b2 beside the small ones.
    'pvt_t_peers_backbone': ('backbone', pvt_peers(PVT_T, SLAB_PVT_T, 'pvtv2_b1')),
    'pvt_t_peers_mask_rcnn': ('detector', pvt_peers(PVT_T, SLAB_PVT_T, 'pvtv2_b1')),
    'pvt_s_peers_backbone': ('backbone', pvt_peers(PVT_S, SLAB_PVT_S, 'pvtv2_b2')),
    'pvt_s_peers_mask_rcnn': ('detector', pvt_peers(PVT_S, SLAB_PVT_S, 'pvtv2_b2')),
}


def timm_display_name(name):
    """'pvt_v2_b1' -> 'PVTv2-b1 (timm)', 'efficientvit_b2' -> 'EfficientViT-B2 (timm)'."""
    family, _, size = name.rpartition('_')
    return {'pvt_v2': f'PVTv2-{size}', 'efficientvit': f'EfficientViT-{size.upper()}'}[family] + ' (timm)'


# Child configs of a comparison entry 'kind:config': file suffix, display name ({model}: the
# config's), model settings merged into the config's.
VARIANTS = {
    # The norm layers deleted (deploy=True builds nn.Identity in place of every norm, the
    # output norms included): the floor that fusion can reach.
    'floor': ('norms_deleted', '{model} (norms deleted)',
              dict(backbone=dict(deploy=True, out_norms_folded=True, init_cfg=None))),
    # Every PRepBN replaced by LayerNorm (eps as the PVT models): the LayerNorm model.
    'ln': ('layernorm', '{model} (layernorm)', dict(backbone=dict(norm_cfg=dict(type='LN', eps=1e-6), init_cfg=None))),
    # DyT (gamma * tanh(alpha * x) + beta) in place of every norm: the 2025 statistics-free peer of PRepBN.
    'dyt': ('dyt', '{model} (DyT)', dict(backbone=dict(norm_cfg=dict(_delete_=True, type='DyT'), init_cfg=None))),
    # mmdet's PVTv2 in place of the backbone (same output channels): the efficient peers.
    **{f'pvtv2_{v}': (f'pvtv2_{v}', f'PVTv2-{v} (mmdet)', dict(backbone=dict(_delete_=True, **PVTV2_BACKBONES[v])))
       for v in PVTV2_BACKBONES},
    # timm's models in place of the backbone (the neck reads their channels): PVTv2 with
    # attention through torch SDPA (the fastest peer), EfficientViT.
    **{f'timm_{name}': (f'timm_{name}', timm_display_name(name), timm_peer_options(name)) for name in TIMM_PEERS},
}


def variant_config(kind, config, out_dir):
    """Write the child config of ``config`` for variant ``kind``; returns (path, display name)."""
    suffix, name, model = VARIANTS[kind]
    stem = osp.splitext(osp.basename(config))[0]
    path = osp.join(out_dir, f'{stem}_{suffix}.py')
    with open(path, 'w') as f:
        f.write(f"_base_ = '{osp.join(REPO, config)}'\n"
                f"model = {model!r}\n"
                "custom_hooks = []\n"
                # TimmPeerBackbone is registered by slab_mmdet.benchmark.peers.
                "custom_imports = dict(imports=['slab_mmdet', 'slab_mmdet.benchmark.peers'], "
                "allow_failed_imports=False)\n")
    return path, name.format(model=stem)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--num-images', type=int, default=8)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--images', default=osp.join(REPO, 'data', 'mini_coco', 'val'),
                        help='image folder (default: mini COCO val; make it with tools/make_mini_coco.py)')
    parser.add_argument('--combine', nargs=2, metavar='RECORD_JSON',
                        help="print the paired ratios of two runs' record.json side by side, and exit")
    parser.add_argument('--no-memory', action='store_true',
                        help='skip the peak-memory pass (one more forward per model and image): half the time')
    parser.add_argument('--own-boxes', action='store_true',
                        help="detectors: let each model's heads continue with its own boxes instead of the first "
                             "model's (with random weights the head work then differs from model to model)")
    parser.add_argument('--cpu-allocator', choices=CPU_ALLOCATOR_MODES, default='reuse',
                        help="how the C allocator treats freed memory (slab_mmdet.benchmark.allocator): reuse "
                             "(default) or glibc's default, system")
    parser.add_argument('--only', nargs='+', choices=sorted(COMPARISONS), help='run only these comparisons')
    parser.add_argument('--out-dir', default=osp.join(REPO, 'work_dirs', 'benchmarks', 'latency'))
    args = parser.parse_args(argv)
    if args.combine:
        runs = []
        for path in args.combine:
            with open(path) as f:
                runs.append(json.load(f))
        print(render_two_runs(*runs))
        return
    import torch
    from slab_mmdet.benchmark import (FIXED_DETECTIONS, FUSED_SUFFIX, benchmark_backbones, benchmark_detectors,
                                      load_models, resolve_images, set_cpu_allocator)
    from slab_mmdet.benchmark.report import machine_facts, render_markdown, summarize_result, write_report
    from slab_mmdet.apis import load_config

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == 'cpu':
        set_cpu_allocator(args.cpu_allocator)
    os.makedirs(args.out_dir, exist_ok=True)
    record = {}
    command = command_line(__file__, argv)
    for name, (target, entries) in COMPARISONS.items():
        if args.only and name not in args.only:
            continue
        print(f'\n=== {name} ({target}) ===', flush=True)
        models = []
        for config, fuse in entries:
            kind, _, config = config.rpartition(':')
            path, display = variant_config(kind, config, args.out_dir) if kind else (osp.join(REPO, config), None)
            loaded = load_models([path], fuse=fuse, device=args.device, cfg_options=FIXED_DETECTIONS)
            for m in loaded if display else ():
                m.name = display + (FUSED_SUFFIX if m.fused else '')
            models += loaded
        reference = osp.join(REPO, entries[0][0].rpartition(':')[2])
        images = resolve_images(load_config(reference), args.num_images, images_dir=args.images)
        if target == 'backbone':
            result = benchmark_backbones(models, images, warmup=args.warmup, memory=not args.no_memory)
        else:
            result = benchmark_detectors(models, images, warmup=args.warmup, memory=not args.no_memory,
                                         shared_boxes=not args.own_boxes)
        summary = summarize_result(result, machine_facts(args.device, command))
        write_report(summary, args.out_dir, stem=name)
        print(render_markdown(summary), flush=True)
        record[name] = [dict(model=m['name'], mean_ms=m['latency_ms']['mean'], **m['ratio_to_first']['paired'])
                        for m in summary['models']]
        with open(osp.join(args.out_dir, 'record.json'), 'w') as f:   # after every comparison: kept if cut
            json.dump(dict(command=command, machine=summary['machine'], comparisons=record), f, indent=1)
    print('\n' + render_record(record))


def render_two_runs(first, second):
    """Markdown: each model's paired ratio in two runs of the record, and how far they part."""
    from slab_mmdet.benchmark.report import format_paired
    lines = ['| comparison | model | run 1: paired ratio (p10-p90) | run 2 | difference |', '|---|---|---:|---:|---:|']
    worst = 0.0
    for name, rows in first['comparisons'].items():
        other = {r['model']: r for r in second['comparisons'].get(name, [])}
        for r in rows[1:]:   # the first model is the reference (1.000)
            o = other.get(r['model'])
            diff = abs(r['median'] - o['median']) if o else None
            worst = max(worst, diff or 0.0)
            lines.append(f"| {name} | {r['model']} | {format_paired(r)} | {format_paired(o)} | "
                         f"{'–' if diff is None else format(diff, '.3f')} |")
    return '\n'.join(lines) + f'\n\nLargest difference between the runs: {worst:.3f}.'


def render_record(record):
    """One Markdown table of every comparison: each model's paired ratio to the comparison's first."""
    from slab_mmdet.benchmark.report import format_paired
    lines = ['| comparison | model | mean (ms) | paired ratio (p10-p90) |', '|---|---|---:|---:|']
    for name, rows in record.items():
        lines += [f"| {name} | {r['model']} | {r['mean_ms']:.0f} | {format_paired(r)} |" for r in rows]
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
