"""Page faults per forward, and what they cost, under each CPU allocator mode of the latency benchmark.

Each mode runs in its own process (glibc's 'reuse' settings cannot be undone): every backbone
(random weights, SLAB fused) runs on one 1x3xHxW input, warm-up forwards first, then timed
forwards, each counting the process's minor page faults (getrusage). The table gives, per
model and mode, the median time and the faults per forward, and the reuse/system time ratio.

    python benchmarks/page_faults.py --threads 2 --size 800x1216 --runs 5
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys

from bootstrap import REPO, command_line
from slab_mmdet.benchmark.allocator import CPU_ALLOCATOR_MODES

CONFIGS = {   # name -> (config, fuse mode) or ('timm', model name)
    'PVT-S twin': ('configs/mask_rcnn_pvt_s_twin.py', 'none'),
    'SLAB-PVT-S fused': ('configs/mask_rcnn_slab_pvt_s.py', 'yes'),
    'PVTv2-b2 (timm)': ('timm', 'pvt_v2_b2'),
    'EfficientViT-B3 (timm)': ('timm', 'efficientvit_b3'),
    'PVT-S (mmdet)': ('configs/mask_rcnn_pvt_s.py', 'none'),
    'Swin-T twin': ('configs/mask_rcnn_swin_t_twin.py', 'none'),
    'SLAB-Swin-T fused': ('configs/mask_rcnn_slab_swin_t.py', 'yes'),
    'Swin-T (mmdet)': ('configs/mask_rcnn_swin_t.py', 'none'),
}


def build_backbone(source, detail):
    if source == 'timm':
        from slab_mmdet.benchmark.peers import TimmPeerBackbone
        return TimmPeerBackbone(detail).eval()
    from slab_mmdet.benchmark import load_models
    return load_models([osp.join(REPO, source)], fuse=detail, log=None)[0].model.backbone


def child(mode, threads, size, warmup, runs):
    """One process, one allocator mode: {model: {'median_ms', 'faults_per_forward'}}."""
    import time

    import numpy as np
    import torch
    from slab_mmdet.benchmark import set_cpu_allocator
    from slab_mmdet.benchmark.allocator import minor_page_faults
    torch.set_num_threads(threads)
    in_effect = set_cpu_allocator(mode)
    if in_effect != mode:
        raise SystemExit(f'cpu allocator {mode!r} is not available here (got {in_effect!r})')
    x = torch.randn(1, 3, *size)
    rows = {}
    for name, (source, detail) in CONFIGS.items():
        backbone = build_backbone(source, detail)
        ms, faults = [], []
        with torch.inference_mode():
            for _ in range(warmup):
                backbone(x)
            for _ in range(runs):
                before = minor_page_faults()
                start = time.perf_counter()
                backbone(x)
                ms.append((time.perf_counter() - start) * 1e3)
                faults.append(minor_page_faults() - before)
        rows[name] = dict(median_ms=float(np.median(ms)), faults_per_forward=float(np.median(faults)))
        print(f'[{mode}] {name}: {rows[name]["median_ms"]:.0f} ms, {rows[name]["faults_per_forward"]:.0f} faults',
              file=sys.stderr, flush=True)
        del backbone
    return rows


def interleaved_rounds(backbones, x, warmup, rounds):
    """{name: [ms of each timed round]}: every round runs every backbone once on ``x``, in order;
    the first ``warmup`` rounds are not kept. Call under ``torch.inference_mode()``."""
    import time
    ms = {name: [] for name in backbones}
    for r in range(warmup + rounds):
        for name, backbone in backbones.items():
            start = time.perf_counter()
            backbone(x)
            if r >= warmup:
                ms[name].append((time.perf_counter() - start) * 1e3)
    return ms


def input_size(parser, text):
    """(H, W) from ``--size`` text 'HxW', or the parser's error naming it."""
    try:
        size = tuple(int(v) for v in text.lower().split('x'))
        assert len(size) == 2 and min(size) >= 32
    except (ValueError, AssertionError):
        parser.error(f'--size {text!r}: expected HxW with both sides >= 32, e.g. 800x1216')
    return size


def write_record(out_dir, stem, record, table):
    """``<out_dir>/<stem>.json`` (the record) and ``<stem>.md`` (its table), and the table printed."""
    os.makedirs(out_dir, exist_ok=True)
    with open(osp.join(out_dir, f'{stem}.json'), 'w') as f:
        json.dump(record, f, indent=1)
    with open(osp.join(out_dir, f'{stem}.md'), 'w') as f:
        f.write(table)
    print(table)


def render(results, machine):
    lines = [f'Machine: {machine["cpu"]}, {machine["threads"]} threads, torch {machine["torch"]}; '
             f'{machine["date"]}; `{machine["command"]}`', '',
             '| backbone | system: median ms | system: faults / forward | reuse: median ms | reuse: faults / forward '
             '| reuse / system time |', '|---|---:|---:|---:|---:|---:|']
    for name in CONFIGS:
        s, r = results['system'][name], results['reuse'][name]
        lines.append(f'| {name} | {s["median_ms"]:.0f} | {s["faults_per_forward"]:,.0f} | {r["median_ms"]:.0f} | '
                     f'{r["faults_per_forward"]:,.0f} | {r["median_ms"] / s["median_ms"]:.2f} |')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--size', default='800x1216', help='input HxW')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--out', default=osp.join(REPO, 'work_dirs', 'benchmarks', 'page_faults'))
    parser.add_argument('--child', choices=CPU_ALLOCATOR_MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = input_size(parser, args.size)
    if args.threads < 1 or args.warmup < 0 or args.runs < 1:
        parser.error('--threads and --runs must be >= 1, --warmup >= 0')
    if args.child:
        print(json.dumps(child(args.child, args.threads, size, args.warmup, args.runs)))
        return
    from slab_mmdet.benchmark.report import machine_facts
    import torch
    torch.set_num_threads(args.threads)
    command = command_line(__file__, argv)
    results = {}
    for mode in CPU_ALLOCATOR_MODES:
        out = subprocess.run([sys.executable, __file__, '--child', mode, '--threads', str(args.threads),
                              '--size', args.size, '--warmup', str(args.warmup), '--runs', str(args.runs)],
                             stdout=subprocess.PIPE, check=True, text=True).stdout
        results[mode] = json.loads(out.strip().splitlines()[-1])
    machine = machine_facts('cpu', command)
    machine.pop('cpu_allocator')   # each mode ran in its own process
    write_record(args.out, 'page_faults', dict(machine=machine, results=results), render(results, machine))


if __name__ == '__main__':
    main()
