"""Do transparent huge pages make the memory-bound peers' ratios repeat from run to run (issue #38)?

Each run is its own process, with freed memory reused ('reuse'), and with PyTorch's
``THP_MEM_ALLOC_ENABLE=1`` (allocations of 2 MiB and more aligned to 2 MiB and advised
``MADV_HUGEPAGE``) or without; the modes alternate, run after run. In a run every backbone
(random weights, SLAB fused; page_faults.py's list) runs on one 1x3xHxW input in interleaved
rounds (each round times every model once, after warm-up rounds), and each ratio is the
median over rounds of the model's time over its twin's in that round. The table gives every
run's ratios, the spread of each ratio over the runs of a mode, and the process's
``AnonHugePages`` (how much of its memory huge pages actually backed).

    python benchmarks/huge_pages.py --threads 2 --size 800x1216 --rounds 8 --runs 3
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys

from bootstrap import REPO, command_line
from page_faults import CONFIGS, build_backbone, input_size, interleaved_rounds, write_record

MODES = ('4 KiB pages', 'huge pages')
THP_ENV = 'THP_MEM_ALLOC_ENABLE'   # read once by PyTorch's CPU allocator, so set before the process starts


def twin_of(name):
    return 'Swin-T twin' if 'Swin' in name else 'PVT-S twin'


def anon_huge_pages_mib():
    with open('/proc/self/smaps_rollup') as f:
        for line in f:
            if line.startswith('AnonHugePages:'):
                return int(line.split()[1]) / 1024
    return None


def child(threads, size, warmup, rounds):
    import numpy as np
    import torch
    from slab_mmdet.benchmark import set_cpu_allocator
    torch.set_num_threads(threads)
    set_cpu_allocator('reuse')
    x = torch.randn(1, 3, *size)
    backbones = {name: build_backbone(*spec) for name, spec in CONFIGS.items()}
    with torch.inference_mode():
        ms = interleaved_rounds(backbones, x, warmup, rounds)
    return dict(huge_pages_mib=anon_huge_pages_mib(),
                median_ms={n: float(np.median(v)) for n, v in ms.items()},
                ratio={n: float(np.median(np.array(v) / np.array(ms[twin_of(n)]))) for n, v in ms.items()})


def render(runs, machine):
    names = [n for n in CONFIGS if twin_of(n) != n]
    lines = [f'Machine: {machine["cpu"]}, {machine["threads"]} threads, torch {machine["torch"]}; '
             f'{machine["date"]}; `{machine["command"]}`', '',
             '| run | pages | huge pages backing (MiB) | ' + ' | '.join(f'{n} / twin' for n in names) + ' |',
             '|---|---|---:|' + '---:|' * len(names)]
    for i, run in enumerate(runs, 1):
        lines.append(f'| {i} | {run["mode"]} | {run["huge_pages_mib"]:.0f} | '
                     + ' | '.join(f'{run["ratio"][n]:.3f}' for n in names) + ' |')
    for mode in MODES:
        of_mode = [r for r in runs if r['mode'] == mode]
        if len(of_mode) > 1:
            spreads = [max(r['ratio'][n] for r in of_mode) - min(r['ratio'][n] for r in of_mode) for n in names]
            lines.append(f'| spread over {len(of_mode)} runs | {mode} | | ' + ' | '.join(f'{s:.3f}' for s in spreads)
                         + ' |')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--size', default='800x1216', help='input HxW')
    parser.add_argument('--warmup', type=int, default=2, help='untimed rounds first')
    parser.add_argument('--rounds', type=int, default=8, help='timed rounds per run')
    parser.add_argument('--runs', type=int, default=3, help='runs (processes) per mode')
    parser.add_argument('--out', default=osp.join(REPO, 'work_dirs', 'benchmarks', 'huge_pages'))
    parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = input_size(parser, args.size)
    if args.threads < 1 or args.warmup < 0 or args.rounds < 1 or args.runs < 1:
        parser.error('--threads, --rounds and --runs must be >= 1, --warmup >= 0')
    if args.child:
        print(json.dumps(child(args.threads, size, args.warmup, args.rounds)))
        return
    import torch
    from slab_mmdet.benchmark.report import machine_facts
    torch.set_num_threads(args.threads)
    command = command_line(__file__, argv)
    os.makedirs(args.out, exist_ok=True)
    runs = []
    for i in range(args.runs):
        for mode in MODES:
            env = {k: v for k, v in os.environ.items() if k != THP_ENV}
            if mode == 'huge pages':
                env[THP_ENV] = '1'
            print(f'run {i + 1}/{args.runs}, {mode} ...', flush=True)
            out = subprocess.run([sys.executable, __file__, '--child', '--threads', str(args.threads), '--size',
                                  args.size, '--warmup', str(args.warmup), '--rounds', str(args.rounds)],
                                 stdout=subprocess.PIPE, check=True, text=True, env=env).stdout
            runs.append(dict(mode=mode, **json.loads(out.strip().splitlines()[-1])))
            with open(osp.join(args.out, 'huge_pages.json'), 'w') as f:   # after every run: kept if cut
                json.dump(dict(command=command, runs=runs), f, indent=1)
    machine = machine_facts('cpu', command)
    machine['cpu_allocator'] = 'reuse (in every run)'
    write_record(args.out, 'huge_pages', dict(machine=machine, runs=runs), render(runs, machine))


if __name__ == '__main__':
    main()
