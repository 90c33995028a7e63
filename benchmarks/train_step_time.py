"""Training-iteration time during PRepBN annealing vs the LayerNorm baselines.

Each model trains on the same batch (2 mini COCO images resized to 512x512, no flips)
with its config's optimizer; the PRepBN models sit at g = 0.5, where both branches run
(the cost of the annealing phase). One iteration = data preprocessing + forward + loss +
backward + optimizer step; the models are interleaved iteration by iteration.

    python benchmarks/train_step_time.py --threads 2 --iters 6 --warmup 1
    python benchmarks/train_step_time.py --family Swin     # the Swin pair only
    python benchmarks/train_step_time.py --family Swin --part backbone

With ``--part backbone`` an iteration is the backbone alone: forward on the preprocessed
batch, a stand-in loss (mean square of each output), backward and the optimizer step. The
heads are the same in every model, but their work is not: with random weights each model
proposes different boxes, so the mask head trains on a different number of positive RoIs;
the backbone alone measures the cost the models differ by.
"""
import argparse
import copy
import json
import os
import os.path as osp
import statistics
import time

from bootstrap import REPO
TIMED_MODELS = [
    ('mmdet PVT-S (LN)', 'configs/mini/mask_rcnn_pvt_s.py'),
    ('SLAB-PVT-S (g = 0.5)', 'configs/mini/mask_rcnn_slab_pvt_s.py'),
    ('PVT-S-PRepBN (g = 0.5)', 'configs/mini/mask_rcnn_pvt_s_prepbn.py'),
    ('mmdet Swin-T (LN)', 'configs/mini/mask_rcnn_swin_t.py'),
    ('SLAB-Swin-T (g = 0.5)', 'configs/mini/mask_rcnn_slab_swin_t.py'),
]


def family(name):
    return 'Swin' if 'Swin' in name else 'PVT'


def build(config, data_root):
    from mmengine.dataset import pseudo_collate
    from mmengine.optim import build_optim_wrapper
    from mmdet.registry import DATASETS
    from slab_mmdet.apis import load_detector
    from slab_mmdet.models.layers import iter_prepbn

    model = load_detector(osp.join(REPO, config), init_weights=True)
    cfg = model.cfg
    dataset_cfg = cfg.train_dataloader.dataset
    dataset_cfg.data_root = data_root.rstrip('/') + '/'
    dataset_cfg.pipeline = [t for t in dataset_cfg.pipeline if t['type'] != 'RandomFlip']
    for t in dataset_cfg.pipeline:
        if t['type'] == 'Resize':
            t.update(scale=(512, 512), keep_ratio=False)
    dataset = DATASETS.build(dataset_cfg)
    batch = pseudo_collate([dataset[0], dataset[1]])
    for _, m in iter_prepbn(model):
        m.set_g(0.5)
    model.train()
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    return model, optim, batch


def step(model, optim, batch, part='detector'):
    data = model.data_preprocessor(copy.deepcopy(batch), True)
    if part == 'backbone':
        loss = sum(out.float().square().mean() for out in model.backbone(data['inputs']))
    else:
        loss, _ = model.parse_losses(model(**data, mode='loss'))
    optim.update_params(loss)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--iters', type=int, default=6)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--data-root', default=osp.join(REPO, 'data', 'mini_coco'))
    parser.add_argument('--family', choices=['PVT', 'Swin'], help='time only this family (its LN baseline first)')
    parser.add_argument('--part', choices=['detector', 'backbone'], default='detector',
                        help='what one iteration trains: the whole detector (default) or the backbone alone')
    parser.add_argument('--out', default=osp.join(REPO, 'work_dirs', 'benchmarks', 'train_step_time.json'))
    args = parser.parse_args(argv)
    import torch
    import slab_mmdet  # noqa: F401
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    chosen = [(name, config) for name, config in TIMED_MODELS if args.family in (None, family(name))]
    runs = [(name, *build(config, args.data_root)) for name, config in chosen]
    times = {name: [] for name, *_ in runs}
    for i in range(args.warmup + args.iters):
        for name, model, optim, batch in runs:
            t = time.perf_counter()
            step(model, optim, batch, args.part)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t)
        print(f'iteration {i + 1}/{args.warmup + args.iters} done', flush=True)
    first = statistics.median(times[runs[0][0]])
    rows = [dict(model=name, median_s=statistics.median(v), mean_s=statistics.mean(v),
                 ratio_to_first=statistics.median(v) / first) for name, v in times.items()]
    # Each family's LayerNorm baseline is its first model.
    ref_by_family = {}
    for r in rows:
        ref_by_family.setdefault(family(r['model']), r['median_s'])
    print('| model | median s/iter | mean s/iter | vs its LN baseline |\n| --- | --- | --- | --- |')
    for r in rows:
        base = ref_by_family[family(r['model'])]
        print(f"| {r['model']} | {r['median_s']:.2f} | {r['mean_s']:.2f} | {r['median_s'] / base:.2f}x |")
    os.makedirs(osp.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(dict(threads=torch.get_num_threads(), iters=args.iters, part=args.part, rows=rows, raw=times), f,
                  indent=1)


if __name__ == '__main__':
    main()
