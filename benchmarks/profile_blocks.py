"""Where one transformer block's time goes (issue #40 item 1): a block of a SLAB backbone,
fused, against the same block of its LayerNorm + softmax twin, per operator, at the token
grid an 800x1216 input gives that stage.

For each (twin, SLAB) pair and each chosen block (stage s, block j: ``s.j``), the block
runs on random tokens of its stage's shape (batch 1; stage 0 of a stride-4 backbone at
800x1216 is 200x304 = 60,800 tokens). Rounds alternate the two models' blocks; the block's
wall time is the median over rounds, and their ratio the median of per-round ratios. One
profiled run of each block (torch.profiler, input shapes recorded) gives per operator: calls,
self time per forward, share, whether it is compute (matmul, convolution, SDPA) or moves
memory (everything else: elementwise, norms, copies, reshapes that copy, softmax), and how
much it reads, in units of the block's token tensor (tokens x channels elements; the
largest input of each call, summed): a memory-bound operator's passes over the tokens.

    python benchmarks/profile_blocks.py --threads 2 --rounds 20
    python benchmarks/profile_blocks.py --pairs pvt_s --blocks 0.0 2.0 --threads 2

Writes <out>/profile_blocks.{md,json} and prints the Markdown.
"""
import argparse
import json
import os
import os.path as osp
import statistics
import time

from bootstrap import REPO, command_line

# pair -> (twin config, SLAB config, default blocks 'stage.block')
PAIRS = {
    'pvt_s': ('configs/mask_rcnn_pvt_s_twin.py', 'configs/mask_rcnn_slab_pvt_s.py', ('0.0', '2.0')),
    'swin_t': ('configs/mask_rcnn_swin_t_twin.py', 'configs/mask_rcnn_slab_swin_t.py', ('0.0', '0.1')),
}
INPUT_HW = (800, 1216)
# Kernels that do the arithmetic; every other kernel is bound by memory traffic at these sizes
# (a few flops per element read or written).
COMPUTE_OPS = ('aten::mm', 'aten::addmm', 'aten::addmm_', 'aten::bmm', 'aten::baddbmm', 'aten::mkldnn_convolution',
               'aten::_scaled_dot_product_flash_attention_for_cpu', 'aten::_mkl_linear', 'aten::thnn_conv2d',
               'aten::_nnpack_spatial_convolution', 'aten::_slow_conv2d_forward')
# Operators that move no data themselves: views, allocations, and composites whose kernels are
# counted on their own (linear -> addmm, matmul -> bmm, contiguous -> copy_).
NO_DATA_OPS = ('aten::view', 'aten::_reshape_alias', 'aten::reshape', 'aten::transpose', 'aten::permute',
               'aten::as_strided', 'aten::expand', 'aten::unsqueeze', 'aten::squeeze', 'aten::flatten',
               'aten::unflatten', 'aten::select', 'aten::slice', 'aten::t', 'aten::contiguous', 'aten::empty',
               'aten::empty_like', 'aten::empty_strided', 'aten::resize_', 'aten::detach', 'aten::alias',
               'aten::chunk', 'aten::split', 'aten::unbind', 'aten::narrow', 'aten::linear', 'aten::matmul',
               'aten::conv2d', 'aten::convolution', 'aten::_convolution', 'aten::scaled_dot_product_attention',
               'aten::einsum', 'aten::_unsafe_view', 'aten::lift_fresh', 'aten::split_with_sizes',
               'aten::_scaled_dot_product_flash_attention', 'aten::dropout', 'aten::identity', 'aten::to',
               'aten::result_type', 'aten::size')


def op_kind(op):
    return 'compute' if op in COMPUTE_OPS else 'no data' if op in NO_DATA_OPS else 'memory'



def block_of(backbone, stage, index):
    """Block ``index`` of stage ``stage`` and the (H, W) token grid it sees at INPUT_HW."""
    stages = backbone.stages
    block = stages[stage].blocks[index]
    stride = backbone.patch_size * 2 ** stage
    hw = (-(-INPUT_HW[0] // stride), -(-INPUT_HW[1] // stride))
    return block, hw


def block_channels(block):
    """The channels of the tokens a block takes: the input width of its first linear layer."""
    import torch.nn as nn
    return next(m.in_features for m in block.modules() if isinstance(m, nn.Linear))


def time_rounds(blocks, inputs, rounds):
    """Per round, each block once (the order alternating); returns [[ms per block] per round]."""
    import torch
    out = []
    with torch.inference_mode():
        for r in range(rounds):
            times = [None] * len(blocks)
            order = range(len(blocks)) if r % 2 == 0 else reversed(range(len(blocks)))
            for i in order:
                start = time.perf_counter()
                blocks[i](*inputs[i])
                times[i] = (time.perf_counter() - start) * 1e3
            out.append(times)
    return out


def profile_ops(block, inputs, token_numel, runs=2):
    """[{op, calls, self_ms, kind, token_passes}] per forward, from torch.profiler over `runs` forwards."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    with torch.inference_mode():
        block(*inputs)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(runs):
                block(*inputs)
    rows = {}
    for event in prof.key_averages(group_by_input_shape=True):
        if event.self_cpu_time_total <= 0 or not event.key.startswith('aten::'):
            continue
        largest = max((_numel(s) for s in event.input_shapes or [] if isinstance(s, (list, tuple))), default=0)
        row = rows.setdefault(event.key, dict(op=event.key, calls=0, self_ms=0.0, token_passes=0.0,
                                              kind=op_kind(event.key)))
        row['calls'] += event.count / runs
        row['self_ms'] += event.self_cpu_time_total / 1e3 / runs
        row['token_passes'] += event.count / runs * largest / token_numel
    total = sum(r['self_ms'] for r in rows.values())
    for r in rows.values():
        r['share'] = r['self_ms'] / total if total else 0.0
    return sorted(rows.values(), key=lambda r: -r['self_ms'])


def _numel(shape):
    n = 1
    for d in shape:
        if not isinstance(d, int):
            return 0
        n *= d
    return n


def render(results):
    lines = []
    for res in results:
        lines += [f"### {res['pair']} block {res['block']} ({res['tokens']} tokens x {res['channels']} channels, "
                  f"{res['hw'][0]}x{res['hw'][1]})", '',
                  f"Block time, median of {res['rounds']} alternating rounds: twin {res['twin_ms']:.1f} ms, "
                  f"SLAB fused {res['slab_ms']:.1f} ms; paired ratio {res['ratio']:.3f} "
                  f"(p10-p90 {res['ratio_p10']:.2f}-{res['ratio_p90']:.2f}).", '']
        for side in ('twin', 'slab'):
            ops = res[f'{side}_ops']
            total = sum(o['self_ms'] for o in ops)
            memory = sum(o['self_ms'] for o in ops if o['kind'] == 'memory')
            passes = sum(o['token_passes'] for o in ops if o['kind'] == 'memory')
            lines += [f"**{res[f'{side}_name']}**: {total:.1f} ms of operator self time per forward, "
                      f"{memory / total:.0%} of it in memory-bound operators, which read the equivalent of "
                      f"{passes:.1f} passes over the block's tokens.",
                      '', '| operator | kind | calls | self ms | share | reads (token passes) |',
                      '|---|---|---:|---:|---:|---:|']
            lines += [f"| {o['op']} | {o['kind']} | {o['calls']:.0f} | {o['self_ms']:.2f} | {o['share']:.1%} | "
                      f"{o['token_passes']:.1f} |" for o in ops if o['share'] >= 0.005]
            lines.append('')
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--pairs', nargs='+', default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument('--blocks', nargs='+', default=None, metavar='S.J',
                        help="blocks as 'stage.block' (default: each pair's own, 0.0 and 2.0 for PVT-S)")
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=20)
    parser.add_argument('--out', default=osp.join(REPO, 'work_dirs', 'profile_blocks'))
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error(f'--rounds must be >= 2, got {args.rounds}')
    import torch
    from slab_mmdet.benchmark import load_models
    from slab_mmdet.benchmark.report import machine_facts, paired_ratio
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = []
    for pair in args.pairs:
        twin_cfg, slab_cfg, default_blocks = PAIRS[pair]
        twin = load_models([osp.join(REPO, twin_cfg)], log=None)[0]
        slab = load_models([osp.join(REPO, slab_cfg)], fuse='yes', log=None)[0]
        for spec in args.blocks or default_blocks:
            stage, _, index = spec.partition('.')
            if not (stage.isdigit() and index.isdigit()):
                parser.error(f"--blocks: expected 'stage.block' such as 0.0, got {spec!r}")
            blocks, inputs = [], []
            for model in (twin, slab):
                block, hw = block_of(model.model.backbone, int(stage), int(index))
                channels = block_channels(block)
                blocks.append(block.eval())
                inputs.append((torch.randn(1, hw[0] * hw[1], channels), hw))
            tokens = hw[0] * hw[1]
            print(f'[profile] {pair} block {spec}: {tokens} tokens x {channels}', flush=True)
            time_rounds(blocks, inputs, 2)   # warm-up
            rounds = time_rounds(blocks, inputs, args.rounds)
            paired = paired_ratio([r[1] for r in rounds], [r[0] for r in rounds])
            results.append(dict(
                pair=pair, block=spec, hw=list(hw), tokens=tokens, channels=channels, rounds=args.rounds,
                twin_name=twin.name, slab_name=slab.name,
                twin_ms=statistics.median(r[0] for r in rounds), slab_ms=statistics.median(r[1] for r in rounds),
                ratio=paired['median'], ratio_p10=paired['p10'], ratio_p90=paired['p90'],
                twin_ops=profile_ops(blocks[0], inputs[0], tokens * channels),
                slab_ops=profile_ops(blocks[1], inputs[1], tokens * channels)))
    command = command_line(__file__, argv)
    machine = machine_facts('cpu', command)
    text = (f"Machine: {machine['device_name']}, {args.threads} threads, torch {machine['torch']}; "
            f"{machine['date']}; `{command}`\n\n" + render(results))
    os.makedirs(args.out, exist_ok=True)
    with open(osp.join(args.out, 'profile_blocks.md'), 'w') as f:
        f.write(text + '\n')
    with open(osp.join(args.out, 'profile_blocks.json'), 'w') as f:
        json.dump(dict(machine=machine, results=results), f, indent=1)
    print(text)


if __name__ == '__main__':
    main()
