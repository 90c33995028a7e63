"""SLA's resize of spatially reduced values, written channel by channel or in token order
(issue #40): backbone time of SLAB-PVT fused and its twin with each form, interleaved in one run.

SLAB-PVT resizes V from the reduced keys' grid to all H*W query tokens before the depth-wise
conv. ``1d`` is the form before this change: a 1-D linear resize of the (B, C, M) view, whose
(B, C, H*W) output the conv then copies into token order; ``row`` is today's
``attention.interpolate_tokens``: the same arithmetic as a one-row bilinear resize of a
channels-last map, written in token order, so the conv needs no copy. The function is looked
up at call time, so one process times both forms on the same models. Per round each form
runs every model once (forms in an order rotated by round, one warm-up round); one 1x3xHxW
random input; freed memory reused. Reported per form and family: median times and the median
over rounds of SLAB / twin.

    python benchmarks/token_interpolation.py --threads 2 --rounds 12 --out benchmarks/results/token_interpolation
"""
import argparse
import os.path as osp
import time

from bootstrap import REPO, command_line
from fast_paths import FAMILIES   # family -> (twin config, SLAB config); the SLAB model is fused
from page_faults import build_backbone, input_size, write_record

PVT_FAMILIES = tuple(f for f in FAMILIES if f.startswith('pvt'))


def resize_1d(v, num_tokens):
    """The form before: (B, H*W, C) as a transposed view of the 1-D resize's (B, C, H*W) output."""
    import torch.nn.functional as F
    return F.interpolate(v.transpose(1, 2), size=num_tokens, mode='linear', align_corners=False).transpose(1, 2)


def render(record):
    machine = record['machine']
    lines = [f'Machine: {machine["cpu"]}, {machine["threads"]} threads, torch {machine["torch"]}; '
             f'{machine["date"]}; `{machine["command"]}`; input {record["size"][0]}x{record["size"][1]}, '
             f'{record["rounds"]} rounds', '',
             '| family | form | twin ms | SLAB ms | SLAB / twin | SLAB row / SLAB 1d (paired) |',
             '|---|---|---:|---:|---:|---:|']
    for row in record['rows']:
        gain = '' if row['form'] == '1d' else f'{row["row_over_1d"]:.3f}'
        lines.append(f'| {row["family"]} | {row["form"]} | {row["twin_ms"]:.0f} | {row["slab_ms"]:.0f} | '
                     f'{row["ratio"]:.3f} | {gain} |')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--families', nargs='+', default=list(PVT_FAMILIES), choices=list(PVT_FAMILIES))
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--size', default='800x1216', help='input HxW')
    parser.add_argument('--rounds', type=int, default=12, help='timed rounds, after one warm-up round')
    parser.add_argument('--out', default=osp.join(REPO, 'work_dirs', 'benchmarks', 'token_interpolation'))
    args = parser.parse_args(argv)
    size = input_size(parser, args.size)
    if args.threads < 1 or args.rounds < 1:
        parser.error('--threads and --rounds must be >= 1')
    import numpy as np
    import torch
    from slab_mmdet.benchmark import set_cpu_allocator
    from slab_mmdet.benchmark.report import machine_facts
    from slab_mmdet.models.layers import attention
    torch.set_num_threads(args.threads)
    set_cpu_allocator('reuse')
    forms = {'1d': resize_1d, 'row': attention.interpolate_tokens}
    models = {(family, kind): build_backbone(config, fuse)
              for family in args.families
              for kind, config, fuse in zip(('twin', 'slab'), FAMILIES[family], ('none', 'yes'))}
    x = torch.randn(1, 3, *size)
    names = list(forms)
    ms = {(form, key): [] for form in names for key in models}
    with torch.inference_mode():
        for r in range(args.rounds + 1):
            for form in names[r % len(names):] + names[:r % len(names)]:
                attention.interpolate_tokens = forms[form]
                for key, backbone in models.items():
                    start = time.perf_counter()
                    backbone(x)
                    if r >= 1:
                        ms[(form, key)].append((time.perf_counter() - start) * 1e3)
            print(f'round {r + 1}/{args.rounds + 1}', flush=True)
    attention.interpolate_tokens = forms['row']
    rows = []
    for family in args.families:
        slab_1d = np.array(ms[('1d', (family, 'slab'))])
        for form in names:
            twin, slab = np.array(ms[(form, (family, 'twin'))]), np.array(ms[(form, (family, 'slab'))])
            rows.append(dict(family=family, form=form, twin_ms=float(np.median(twin)), slab_ms=float(np.median(slab)),
                             ratio=float(np.median(slab / twin)), row_over_1d=float(np.median(slab / slab_1d))))
    record = dict(machine=machine_facts('cpu', command_line(__file__, argv)), size=list(size), rounds=args.rounds,
                  rows=rows)
    write_record(args.out, 'token_interpolation', record, render(record))


if __name__ == '__main__':
    main()
