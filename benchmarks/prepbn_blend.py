"""The cost of one PRepBN while it anneals (0 < g < 1), forward + backward, in float32 and under
bf16 autocast: the library's blend (one lerp of the two branches, BN(x) + alpha x as one
addcmul, both branches in LayerNorm's dtype under autocast) against the written form
``g * LN(x) + (1 - g) * (BN(x) + alpha * x)`` with the same parameters.

The tokens are SLAB-PVT-S's stage 1 at an 800x1088 input, batch 2 (2 x 200*272 tokens, 64
channels). Rounds interleave the two forms, the order reversed every other round; the
report gives the median time of each and their ratio per round.

    python benchmarks/prepbn_blend.py --threads 2 --rounds 20
"""
import argparse
import statistics
import time

import bootstrap  # noqa: F401  (the checkout importable)


def written_form(m, x):
    """g LN(x) + (1 - g) RepBN(x), term by term (the code before the one-pass blend)."""
    g, bn = m.g_value, m.repbn.bn
    repbn = bn(x.reshape(-1, x.shape[-1])).reshape(x.shape) + m.repbn.alpha * x
    return g * m.ln(x) + (1 - g) * repbn


def step(forward, m, x, dtype):
    with torch.autocast('cpu', dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        out = forward(m, x)
    out.float().sum().backward()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--rounds', type=int, default=20)
    parser.add_argument('--g', type=float, default=0.5)
    args = parser.parse_args(argv)
    global torch
    import torch
    from slab_mmdet.models.layers import PRepBN

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    m = PRepBN(64).train()
    m.set_g(args.g)
    forms = {'library (lerp, addcmul)': lambda m, x: m(x), 'written form': written_form}
    print(f'PRepBN(64) at g = {args.g}, (2, 54400, 64) tokens, forward + backward, {torch.get_num_threads()} threads, '
          f'{args.rounds} rounds\n')
    print('| precision | library (ms) | written form (ms) | library / written, median per round |')
    print('|---|---:|---:|---:|')
    for label, dtype in (('float32', None), ('bf16 autocast', torch.bfloat16)):
        # Under autocast the tokens come out of a matmul in bf16.
        x = torch.randn(2, 200 * 272, 64).to(dtype or torch.float32).requires_grad_()
        times = {name: [] for name in forms}
        for name, forward in forms.items():   # warm-up
            step(forward, m, x, dtype)
        for r in range(args.rounds):
            order = list(forms.items()) if r % 2 == 0 else list(forms.items())[::-1]
            for name, forward in order:
                start = time.perf_counter()
                step(forward, m, x, dtype)
                times[name].append(time.perf_counter() - start)
        lib, ref = (times[name] for name in forms)
        ratio = statistics.median(a / b for a, b in zip(lib, ref))
        print(f'| {label} | {1e3 * statistics.median(lib):.1f} | {1e3 * statistics.median(ref):.1f} | {ratio:.3f} |')


if __name__ == '__main__':
    main()
