"""One attention layer of SLAB-Swin's SLA stages against mmdet Swin's window attention at
the same place, and against global SLA (the question of issue #13: would SLA over the
whole map in stages 1-2 be faster than SLA in 56/28 windows?).

At an 800x1088 input the stage-1 map is 200x272 (96 channels, 3 heads, SLA window 56)
and the stage-2 map 100x136 (192 channels, 6 heads, window 28). Timed, interleaved
(the order reversed every other round), batch 1, inference:
  * SLAB-Swin's windowed SLA, regular and shifted (`ShiftedWindowAttention`);
  * global SLA: the same parameters over the whole map, the positional encoding
    resized to it (bilinear), the conv on V over the map; written here, not in the
    library, because it is only a candidate;
  * mmdet's `ShiftWindowMSA` (window 7, regular and shifted), what Swin-T runs there.

    python benchmarks/swin_sla_blocks.py --threads 2 --rounds 10
"""
import argparse
import json
import os.path as osp
import time

from bootstrap import REPO
# (stage, channels, heads, SLA window, map at 800x1088)
STAGES = [(1, 96, 3, 56, (200, 272)), (2, 192, 6, 28, (100, 136))]


def global_sla(window_sla):
    """SLA over the whole map with the parameters of ``window_sla`` (a WindowLinearAttention)."""
    import torch.nn.functional as F
    from slab_mmdet.models.layers.attention import normalised_linear_attention, split_heads
    from slab_mmdet.models.layers.transformer import resize_pos_table

    def forward(x, hw_shape):
        a, ws = window_sla, window_sla.window_size
        q, k, v = a.qkv(x).chunk(3, dim=-1)
        q, k = F.relu(q), F.relu(k + resize_pos_table(a.positional_encoding, (ws, ws), hw_shape))
        conv = split_heads(a.value_conv(v, hw_shape, a.num_heads), a.num_heads)
        q, k, v = (split_heads(t, a.num_heads) for t in (q, k, v))
        out = normalised_linear_attention(q, k, v, residual=conv)
        return a.proj(out.transpose(1, 2).flatten(2))
    return forward


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--rounds', type=int, default=10)
    parser.add_argument('--out', default=osp.join(REPO, 'work_dirs', 'benchmarks', 'swin_sla_blocks.json'))
    args = parser.parse_args(argv)
    import torch
    from mmdet.models.backbones.swin import ShiftWindowMSA
    from slab_mmdet.models.layers.window_attention import ShiftedWindowAttention, WindowLinearAttention

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = []
    print('| stage | map | layer | mean (ms) | vs mmdet Swin, same shift |\n|---|---|---|---:|---:|')
    for stage, dims, heads, ws, hw in STAGES:
        sla = WindowLinearAttention(dims, heads, ws).eval()
        layers = {
            'SLA windows, regular': ShiftedWindowAttention(sla, shift_size=0),
            'SLA windows, shifted': ShiftedWindowAttention(sla, shift_size=ws // 2),
            'global SLA': global_sla(sla),
            'mmdet Swin window 7, regular': ShiftWindowMSA(dims, heads, 7, shift_size=0).eval(),
            'mmdet Swin window 7, shifted': ShiftWindowMSA(dims, heads, 7, shift_size=3).eval(),
        }
        x = torch.randn(1, hw[0] * hw[1], dims)
        seconds = {name: [] for name in layers}
        with torch.no_grad():
            for layer in layers.values():
                layer(x, hw)                                   # warm-up
            for r in range(args.rounds):
                order = list(layers) if r % 2 == 0 else list(layers)[::-1]
                for name in order:
                    start = time.perf_counter()
                    layers[name](x, hw)
                    seconds[name].append(time.perf_counter() - start)
        mean = {name: 1000 * sum(v) / len(v) for name, v in seconds.items()}
        for name, ms in mean.items():
            ref = mean['mmdet Swin window 7, shifted' if 'shifted' in name else 'mmdet Swin window 7, regular']
            ratio = f'{ms / ref:.2f}' if 'mmdet' not in name else ''
            print(f'| {stage} | {hw[0]}x{hw[1]} | {name} | {ms:.0f} | {ratio} |', flush=True)
            results.append(dict(stage=stage, map=hw, layer=name, mean_ms=ms, raw_s=seconds[name]))
    import os
    os.makedirs(osp.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(dict(threads=torch.get_num_threads(), rounds=args.rounds, results=results), f, indent=1)


if __name__ == '__main__':
    main()
