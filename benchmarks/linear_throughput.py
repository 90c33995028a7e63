"""How close a backbone block's linear layers run to the CPU's float32 matmul peak.

Times ``F.linear`` (with bias, as the blocks call it) at the token counts and widths of the
SLAB-PVT-S blocks profiled in docs/benchmarks.md ("Where a block's time goes": stage 1 at
800x1216 has 60,800 tokens of 64 channels, stage 3 3,800 of 320), in the row chunks the fast
paths use, and one large square product as the reference peak; reports GFLOP/s and the share
of that peak. Median of --reps timed calls after warm-up.

    python benchmarks/linear_throughput.py --threads 2 --reps 20
"""
import argparse
import os.path as osp

from bootstrap import REPO, command_line

def block_shapes():
    """(what, rows, in features, out features) of one SLAB-PVT-S block's layers (SLA: q, k and v
    halves of kv, proj; MLP fc1, fc2) as the fast paths run them, from their chunk sizes: queries
    in chunks of ``ATTENTION_CHUNK_TOKENS``, the MLP in chunks of ``MLP_CHUNK_ELEMENTS`` hidden
    activations, keys and values over all tokens; and the square reference product last."""
    from slab_mmdet.models.layers.attention import ATTENTION_CHUNK_TOKENS
    from slab_mmdet.models.layers.transformer import MLP_CHUNK_ELEMENTS
    shapes = []
    for stage, tokens, channels, hidden in ((1, 60800, 64, 512), (3, 3800, 320, 1280)):
        queries, mlp_rows = min(tokens, ATTENTION_CHUNK_TOKENS), min(tokens, MLP_CHUNK_ELEMENTS // hidden)
        shapes += [(f'stage {stage} q / proj (chunk)', queries, channels, channels),
                   (f'stage {stage} k or v (all tokens)', tokens, channels, channels),
                   (f'stage {stage} fc1 (chunk)', mlp_rows, channels, hidden),
                   (f'stage {stage} fc2 (chunk)', mlp_rows, hidden, channels)]
    return shapes + [('square 2048 (reference peak)', 2048, 2048, 2048)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--reps', type=int, default=20)
    parser.add_argument('--out', default=osp.join(REPO, 'work_dirs', 'benchmarks', 'linear_throughput.md'))
    args = parser.parse_args(argv)
    if args.threads < 1 or args.reps < 1:
        parser.error(f'--threads and --reps must be >= 1, got {args.threads} and {args.reps}')
    import time

    import numpy as np
    import torch
    import torch.nn.functional as F
    from slab_mmdet.benchmark.report import machine_facts
    torch.set_num_threads(args.threads)
    rows = []
    with torch.inference_mode():
        for what, n, c_in, c_out in block_shapes():
            x, w, b = torch.randn(n, c_in), torch.randn(c_out, c_in), torch.randn(c_out)
            for _ in range(3):
                F.linear(x, w, b)
            seconds = []
            for _ in range(args.reps):
                start = time.perf_counter()
                F.linear(x, w, b)
                seconds.append(time.perf_counter() - start)
            rows.append((what, n, c_in, c_out, 2 * n * c_in * c_out / float(np.median(seconds)) / 1e9))
    peak = rows[-1][-1]
    command = command_line(__file__, argv)
    machine = machine_facts('cpu', command)
    lines = [f'Machine: {machine["cpu"]}, {machine["threads"]} threads, torch {machine["torch"]}; {machine["date"]}; '
             f'`{command}`', '', '| layer | rows x in -> out | GFLOP/s | share of the square product |',
             '|---|---|---:|---:|']
    lines += [f'| {what} | {n} x {c_in} -> {c_out} | {rate:.0f} | {rate / peak:.0%} |'
              for what, n, c_in, c_out, rate in rows]
    text = '\n'.join(lines) + '\n'
    import os
    os.makedirs(osp.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as f:
        f.write(text)
    print(text)


if __name__ == '__main__':
    main()
