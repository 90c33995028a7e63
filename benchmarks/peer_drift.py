"""Does a memory-bound peer's ratio to its twin move with the heap layout or with time (issue #38)?

One process, freed memory reused, one 1x3x800x1216 input; the PVT-S twin, SLAB-PVT-S fused,
timm's EfficientViT-B3 and mmdet's PVT-S (random weights), six epochs of 1 warm-up and 6
timed interleaved rounds each; per epoch the median over rounds of each model's time over the
twin's. Between epochs the ``same`` variant changes nothing; ``relayout`` holds a spacer
tensor of random size (1-63 MiB) and re-allocates every model (a deep copy, the old one freed),
so that weights and activations land at other addresses. Writes the epochs' ratios to OUT.

    for i in 1 2; do
        python benchmarks/peer_drift.py same benchmarks/results/peer_drift/same_$i.json $i
        python benchmarks/peer_drift.py relayout benchmarks/results/peer_drift/relayout_$i.json $i
    done
"""
import copy
import json
import sys

from page_faults import build_backbone, interleaved_rounds

MODELS = {'PVT-S twin': ('configs/mask_rcnn_pvt_s_twin.py', 'none'),
          'SLAB-PVT-S': ('configs/mask_rcnn_slab_pvt_s.py', 'yes'),
          'EffViT-B3': ('timm', 'efficientvit_b3'),
          'mmdet PVT-S': ('configs/mask_rcnn_pvt_s.py', 'none')}
VARIANTS = ('same', 'relayout')


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or argv[0] not in VARIANTS:
        raise SystemExit(f'usage: peer_drift.py {{{",".join(VARIANTS)}}} OUT.json SEED (got {argv})')
    variant, out, seed = argv[0], argv[1], int(argv[2])
    import numpy as np
    import torch
    from slab_mmdet.benchmark import set_cpu_allocator
    torch.set_num_threads(2)
    set_cpu_allocator('reuse')
    rng = np.random.default_rng(seed)
    backbones = {name: build_backbone(*spec) for name, spec in MODELS.items()}
    x = torch.randn(1, 3, 800, 1216)
    spacers, epochs = [], []
    with torch.inference_mode():
        for epoch in range(6):
            if variant == 'relayout' and epoch > 0:
                spacers.append(torch.ones(int(rng.integers(1, 64)) * 2**18 + int(rng.integers(0, 4096))))
                for name in list(backbones):
                    moved = copy.deepcopy(backbones[name])
                    del backbones[name]
                    backbones[name] = moved
            ms = interleaved_rounds(backbones, x, warmup=1, rounds=6)
            twin = np.array(ms['PVT-S twin'])
            epochs.append({n: float(np.median(np.array(v) / twin)) for n, v in ms.items() if n != 'PVT-S twin'})
            print(epoch, epochs[-1], flush=True)
    with open(out, 'w') as f:
        json.dump(epochs, f, indent=1)


if __name__ == '__main__':
    main()
