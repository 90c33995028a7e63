"""Run the PRepBN anneal study: mini-COCO SLAB-PVT-T Mask R-CNN trainings that differ in one
thing each (batch size, BN statistics, output norms, alpha, drop path, ...), several seeds
each, and summarise per run whether the anneal diverged, at which g, and the loss at the end.

Each run is ``tools/train.py benchmarks/anneal_study/configs/anneal_mini.py`` with the variant's
``--cfg-options``, one thread, ``--jobs`` at a time; results go to
``<out>/<variant>_s<seed>/`` and one line per run to ``<out>/summary.jsonl``.

    python benchmarks/anneal_study/run_study.py --variants b1 b2 b2_image_stats --seeds 0 1 2
    python benchmarks/anneal_study/run_study.py --list
"""
import argparse
import json
import math
import os
import os.path as osp
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(osp.dirname(HERE))
CONFIG = osp.join(HERE, 'configs', 'anneal_mini.py')
sys.path.insert(0, ROOT)
from slab_mmdet.engine.training_log import training_scalars  # noqa: E402 (after the checkout is importable)

B2 = ['train_dataloader.batch_size=2']
# Each variant: its cfg-options. 'b2' is the failing baseline; each b2_* changes one thing.
VARIANTS = {
    'b2': B2,
    'b4': ['train_dataloader.batch_size=4'],
    'b2_image_stats': B2 + ['model.backbone.norm_cfg.stats=image'],
    'b4_image_stats': ['train_dataloader.batch_size=4', 'model.backbone.norm_cfg.stats=image'],
    'b2_ln_out_norms': B2 + ["model.backbone.out_norm_cfg.type=LN", 'model.backbone.out_norm_cfg.eps=1e-6'],
    'b2_alpha0': B2 + ['custom_hooks.1.alpha=0.0'],
    'b2_alpha_init0': B2 + ['custom_hooks.1.alpha_init=0.0'],
    'b2_no_drop_path': B2 + ['model.backbone.drop_path_rate=0.0'],
    'b1': ['train_dataloader.batch_size=1'],
    'b2_fixed_size': B2 + ['train_dataloader.dataset.pipeline.2.keep_ratio=False'],
    'b1_fixed_size': ['train_dataloader.batch_size=1', 'train_dataloader.dataset.pipeline.2.keep_ratio=False'],
    # Per-image statistics over unpadded images: each image's BN sees only its own tokens, as at batch 1.
    'b2_fixed_size_image_stats': B2 + ['train_dataloader.dataset.pipeline.2.keep_ratio=False',
                                       'model.backbone.norm_cfg.stats=image'],
    # Each batch one image twice (RepeatEachSampler): b1_fixed_size's image sequence, each image's forward
    # as at batch 1 (per-image statistics, no padding); only the averaging over two distinct images is gone.
    'b2_repeat_fixed_size_image_stats': B2 + ['train_dataloader.dataset.pipeline.2.keep_ratio=False',
                                              'model.backbone.norm_cfg.stats=image',
                                              'train_dataloader.sampler.type=RepeatEachSampler'],
    # b1 trained twice as long during the anneal (500 iterations, the images b2 sees in its 250).
    'b1_fixed_size_anneal500': ['train_dataloader.batch_size=1', 'train_dataloader.dataset.pipeline.2.keep_ratio=False',
                                'train_cfg.max_iters=600', 'custom_hooks.0.anneal_iters=500'],
    'b2_repeat_fixed_size_image_stats_lr_quarter': B2 + ['train_dataloader.dataset.pipeline.2.keep_ratio=False',
                                                         'model.backbone.norm_cfg.stats=image',
                                                         'train_dataloader.sampler.type=RepeatEachSampler',
                                                         'optim_wrapper.optimizer.lr=5e-5'],
    'b1_fixed_size_lr_double': ['train_dataloader.batch_size=1', 'train_dataloader.dataset.pipeline.2.keep_ratio=False',
                                'optim_wrapper.optimizer.lr=4e-4'],
    # The transition in 50 iterations instead of 250 (per-image statistics: they hold at g = 0 at 2 per batch).
    'b2_image_stats_anneal50': B2 + ['model.backbone.norm_cfg.stats=image', 'custom_hooks.0.anneal_iters=50'],
    'b1_accumulate2': ['train_dataloader.batch_size=1', 'optim_wrapper.accumulative_counts=2'],
    'b2_lr_half': B2 + ['optim_wrapper.optimizer.lr=1e-4'],
    'b2_lr_quarter': B2 + ['optim_wrapper.optimizer.lr=5e-5'],
    # The fix (RepBN alpha starts at 0, learned), through the library option.
    'b1_fix': ['model.backbone.norm_cfg.alpha_init=0.0'],
    'b2_fix': B2 + ['model.backbone.norm_cfg.alpha_init=0.0'],
    'b4_fix': ['train_dataloader.batch_size=4', 'model.backbone.norm_cfg.alpha_init=0.0'],
    'p2b2': B2,
    'p2b2_fix': B2 + ['model.backbone.norm_cfg.alpha_init=0.0'],
}
# Fine-tuning the g = 0 detector of a b1 run at 2 images per batch (finetune_annealed.py).
FINETUNE = 'load_from=work_dirs/anneal_study/b1_s1/iter_300.pth'
VARIANTS.update({
    'ft_b2_trained_bn': [FINETUNE],
    'ft_b2_frozen_bn': [FINETUNE, 'model.backbone.norm_eval=True'],
    'ft_b2_image_stats': [FINETUNE, 'model.backbone.norm_cfg.stats=image'],
    'ft_b1_trained_bn': [FINETUNE, 'train_dataloader.batch_size=1'],
})
CONFIGS = {name: osp.join(HERE, 'configs', 'finetune_annealed.py') for name in VARIANTS if name.startswith('ft_')}
# The LayerNorm route (item 4 of the study): an LN PVT-T detector trained on mini COCO (ln_base,
# configs/mini/mask_rcnn_pvt_t.py, 5 epochs) stands in for ImageNet LN weights; converted with
#   python tools/convert_checkpoint.py work_dirs/anneal_study/ln_base_s0/epoch_5.pth \
#       work_dirs/anneal_study/ln_base_s0/converted.pth
# (g = 1) and fine-tuned for 300 iterations at 2 images per batch: as LN (the control), as
# SLAB-PVT-T with the anneal, and as PVT-T-PRepBN (softmax kept) with the anneal.
LN_BASE = 'work_dirs/anneal_study/ln_base_s0/epoch_5.pth'
LN_CONVERTED = 'work_dirs/anneal_study/ln_base_s0/converted.pth'
VARIANTS.update({
    'ln_base': ['train_dataloader.batch_size=1'],   # as it was trained (the mini default is now 2)
    'lnr_ln': [f'load_from={LN_BASE}'],
    'lnr_slab': [f'load_from={LN_CONVERTED}'],
    'lnr_prepbn': [f'load_from={LN_CONVERTED}'],
    # What the converter wrote before 2026-12-02: every RepBN alpha 1 (fresh RepBNs and output norms).
    'lnr_prepbn_alpha1': [f'load_from={LN_CONVERTED}', 'custom_hooks.1.alpha_init=1.0'],
    'lnr_slab_alpha1': [f'load_from={LN_CONVERTED}', 'custom_hooks.1.alpha_init=1.0'],
    # The converter's alpha 0 in the converted norms, but the 4 fresh output norms at the layer's default, 1.
    'lnr_prepbn_out_alpha1': [f'load_from={LN_CONVERTED}', 'model.backbone.out_norm_cfg.alpha_init=1.0'],
    'lnr_slab_out_alpha1': [f'load_from={LN_CONVERTED}', 'model.backbone.out_norm_cfg.alpha_init=1.0'],
    # Every RepBN alpha 0, the output norms' too: the same state as lnr_prepbn / lnr_slab with
    # ln_route_*.py as they are now (converter alpha 0, out_norm_cfg alpha_init 0).
    'lnr_prepbn_alpha_init0': [f'load_from={LN_CONVERTED}', 'custom_hooks.1.alpha_init=0.0'],
    'lnr_slab_alpha_init0': [f'load_from={LN_CONVERTED}', 'custom_hooks.1.alpha_init=0.0'],
    # The converted SLAB-PVT-T at the bar's other batch settings: 4 images, 2 processes x 2 images.
    'lnr_slab_b4': [f'load_from={LN_CONVERTED}', 'train_dataloader.batch_size=4'],
    'lnr_slab_p2b2': [f'load_from={LN_CONVERTED}'],
})
CONFIGS.update({
    'ln_base': osp.join(ROOT, 'configs', 'mini', 'mask_rcnn_pvt_t.py'),
    'lnr_ln': osp.join(HERE, 'configs', 'ln_route_ln.py'),
    'lnr_slab': osp.join(HERE, 'configs', 'ln_route_slab.py'),
    'lnr_prepbn': osp.join(HERE, 'configs', 'ln_route_prepbn.py'),
    'lnr_prepbn_alpha_init0': osp.join(HERE, 'configs', 'ln_route_prepbn.py'),
    'lnr_prepbn_alpha1': osp.join(HERE, 'configs', 'ln_route_prepbn.py'),
    'lnr_prepbn_out_alpha1': osp.join(HERE, 'configs', 'ln_route_prepbn.py'),
    'lnr_slab_out_alpha1': osp.join(HERE, 'configs', 'ln_route_slab.py'),
    'lnr_slab_alpha1': osp.join(HERE, 'configs', 'ln_route_slab.py'),
    'lnr_slab_alpha_init0': osp.join(HERE, 'configs', 'ln_route_slab.py'),
    'lnr_slab_b4': osp.join(HERE, 'configs', 'ln_route_slab.py'),
    'lnr_slab_p2b2': osp.join(HERE, 'configs', 'ln_route_slab.py'),
})
# Variants trained by 2 processes (gloo, one thread each): 2 x the batch size of one process.
NPROC = {'p2b2': 2, 'p2b2_fix': 2, 'lnr_slab_p2b2': 2}


def summarise(name, seed, work_dir, rc, seconds):
    rows = [r for r in training_scalars(work_dir) if 'loss' in r]
    with open(osp.join(work_dir, 'stdout.txt')) as f:
        log = f.read()
    diverged = 'ANNEAL DIVERGED' in log or any(not math.isfinite(r['loss']) for r in rows)
    last = rows[-1] if rows else {}
    tail = [r['loss'] for r in rows[-5:] if math.isfinite(r['loss'])]
    return dict(variant=name, seed=seed, rc=rc, seconds=round(seconds), diverged=diverged,
                last_iter=last.get('iter'), last_g=last.get('prepbn_g'),
                final_loss=round(sum(tail) / len(tail), 4) if tail and not diverged else None,
                max_loss=round(max((r['loss'] for r in rows), default=float('nan')), 4),
                work_dir=osp.relpath(work_dir, ROOT))


def run_one(name, seed, out, extra):
    work_dir = osp.join(out, f'{name}_s{seed}')
    opts = VARIANTS[name] + [f'randomness.seed={seed}'] + extra
    nproc = NPROC.get(name, 1)
    launch = [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={nproc}',
              f'--master_port={29500 + abs(hash((name, seed))) % 1000}'] if nproc > 1 else [sys.executable]
    cmd = [*launch, osp.join(ROOT, 'tools', 'train.py'), CONFIGS.get(name, CONFIG), '--work-dir', work_dir,
           *(['--launcher', 'pytorch'] if nproc > 1 else []), '--cfg-options', *opts]
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join([HERE, ROOT, os.environ.get('PYTHONPATH', '')]))
    start = time.time()
    os.makedirs(work_dir, exist_ok=True)
    with open(osp.join(work_dir, 'stdout.txt'), 'w') as f:
        rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    result = summarise(name, seed, work_dir, rc, time.time() - start)
    if rc != 0 and not result['diverged']:
        result['error'] = f'exit {rc}; see {osp.join(work_dir, "stdout.txt")}'
    print(json.dumps(result), flush=True)
    with open(osp.join(out, 'summary.jsonl'), 'a') as f:
        f.write(json.dumps(result) + '\n')
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--variants', nargs='+', default=['b1', 'b2'])
    parser.add_argument('--seeds', nargs='+', type=int, default=[0])
    parser.add_argument('--jobs', type=int, default=2)
    parser.add_argument('--out', default=osp.join(ROOT, 'work_dirs', 'anneal_study'))
    parser.add_argument('--list', action='store_true', help='list the variants and exit')
    parser.add_argument('--cfg-options', nargs='*', default=[], help='appended to every run')
    args = parser.parse_args(argv)
    if args.list:
        for name, opts in VARIANTS.items():
            print(f'{name:18s} {" ".join(opts)}')
        return
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f'unknown variants {unknown}; known: {sorted(VARIANTS)}')
    os.makedirs(args.out, exist_ok=True)
    jobs = [(v, s) for s in args.seeds for v in args.variants]
    print(f'[anneal-study] {len(jobs)} runs, {args.jobs} at a time -> {args.out}', flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda job: run_one(*job, args.out, args.cfg_options), jobs))


if __name__ == '__main__':
    main()
