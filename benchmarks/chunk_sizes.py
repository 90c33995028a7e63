"""How large the fast paths' chunks should be (issue #40): backbone time of SLAB fused and its
twin for each (MLP chunk elements, attention chunk queries) setting, all interleaved in one run.

``MLP_CHUNK_ELEMENTS`` (slab_mmdet/models/layers/transformer.py) sets how many hidden
activations one chunk of the MLP holds, ``ATTENTION_CHUNK_TOKENS`` (attention.py) how many
queries PVT's attentions take at a time; both are read at call time, so one process times every
setting on the same models. Per round every setting runs every model once (settings in an order
rotated by round, one warm-up round); one 1x3xHxW random input; freed memory reused. Reported
per setting and family: median times and the median over rounds of SLAB / twin.

    python benchmarks/chunk_sizes.py --threads 2 --rounds 8 --out benchmarks/results/chunk_sizes
"""
import argparse
import os.path as osp
import time

from bootstrap import REPO, command_line
from fast_paths import FAMILIES   # family -> (twin config, SLAB config); the SLAB model is fused
from page_faults import build_backbone, input_size, write_record

DEFAULT_SETTINGS = ('1048576x2048', '2097152x4096', '2097152x8192', '4194304x4096')


def parse_setting(parser, text):
    try:
        mlp, attention = (int(v) for v in text.split('x'))
        assert mlp >= 1 and attention >= 1
    except (ValueError, AssertionError):
        parser.error(f'setting {text!r}: expected MLPxATTENTION, two ints >= 1, e.g. 2097152x4096')
    return mlp, attention


def render(record):
    machine = record['machine']
    lines = [f'Machine: {machine["cpu"]}, {machine["threads"]} threads, torch {machine["torch"]}; '
             f'{machine["date"]}; `{machine["command"]}`; input {record["size"][0]}x{record["size"][1]}, '
             f'{record["rounds"]} rounds', '',
             '| MLP chunk (hidden elements) | attention chunk (queries) | family | twin ms | SLAB ms | SLAB / twin |',
             '|---:|---:|---|---:|---:|---:|']
    for row in record['rows']:
        lines.append(f'| {row["mlp"]:,} | {row["attention"]:,} | {row["family"]} | {row["twin_ms"]:.0f} | '
                     f'{row["slab_ms"]:.0f} | {row["ratio"]:.3f} |')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--families', nargs='+', default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument('--settings', nargs='+', default=list(DEFAULT_SETTINGS),
                        help='MLPxATTENTION chunk sizes (default: %(default)s)')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--size', default='800x1216', help='input HxW')
    parser.add_argument('--rounds', type=int, default=8, help='timed rounds, after one warm-up round')
    parser.add_argument('--out', default=osp.join(REPO, 'work_dirs', 'benchmarks', 'chunk_sizes'))
    args = parser.parse_args(argv)
    size = input_size(parser, args.size)
    settings = [parse_setting(parser, s) for s in args.settings]
    if args.threads < 1 or args.rounds < 1:
        parser.error('--threads and --rounds must be >= 1')
    import numpy as np
    import torch
    from slab_mmdet.benchmark import set_cpu_allocator
    from slab_mmdet.benchmark.report import machine_facts
    from slab_mmdet.models.layers import attention, transformer
    torch.set_num_threads(args.threads)
    set_cpu_allocator('reuse')
    defaults = transformer.MLP_CHUNK_ELEMENTS, attention.ATTENTION_CHUNK_TOKENS
    models = {(family, kind): build_backbone(config, fuse)
              for family in args.families
              for kind, config, fuse in zip(('twin', 'slab'), FAMILIES[family], ('none', 'yes'))}
    x = torch.randn(1, 3, *size)
    ms = {(s, key): [] for s in settings for key in models}
    with torch.inference_mode():
        for r in range(args.rounds + 1):
            for s in settings[r % len(settings):] + settings[:r % len(settings)]:
                transformer.MLP_CHUNK_ELEMENTS, attention.ATTENTION_CHUNK_TOKENS = s
                for key, backbone in models.items():
                    start = time.perf_counter()
                    backbone(x)
                    if r >= 1:
                        ms[(s, key)].append((time.perf_counter() - start) * 1e3)
            print(f'round {r + 1}/{args.rounds + 1}', flush=True)
    transformer.MLP_CHUNK_ELEMENTS, attention.ATTENTION_CHUNK_TOKENS = defaults
    rows = []
    for s in settings:
        for family in args.families:
            twin, slab = np.array(ms[(s, (family, 'twin'))]), np.array(ms[(s, (family, 'slab'))])
            rows.append(dict(mlp=s[0], attention=s[1], family=family, twin_ms=float(np.median(twin)),
                             slab_ms=float(np.median(slab)), ratio=float(np.median(slab / twin))))
    record = dict(machine=machine_facts('cpu', command_line(__file__, argv)), size=list(size), rounds=args.rounds,
                  defaults=list(defaults), rows=rows)
    write_record(args.out, 'chunk_sizes', record, render(record))


if __name__ == '__main__':
    main()
