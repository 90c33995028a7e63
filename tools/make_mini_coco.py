"""Write the synthetic mini COCO set (train and val splits, images plus COCO JSON).

Deterministic: the same arguments always give the same files. Skips the work when
the same set is already present (see manifest.json), unless --force.

Example:
    python tools/make_mini_coco.py --out data/mini_coco --num-train 200 --num-val 50
"""
import argparse

from slab_mmdet.datasets import ensure_mini_coco


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='data/mini_coco', help='output directory (default: data/mini_coco)')
    parser.add_argument('--num-train', type=int, default=200, help='train images (default: 200)')
    parser.add_argument('--num-val', type=int, default=50, help='val images (default: 50)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (default: 0)')
    parser.add_argument('--force', action='store_true', help='regenerate even if up to date')
    return parser.parse_args()


def main():
    args = parse_args()
    for name in ('num_train', 'num_val'):
        if getattr(args, name) < 1:
            raise SystemExit(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    files = ensure_mini_coco(args.out, args.num_train, args.num_val, args.seed, force=args.force)
    for split, path in files.items():
        print(f'{split}: {path}')


if __name__ == '__main__':
    main()
