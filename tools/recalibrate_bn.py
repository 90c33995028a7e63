"""Recalibrate the BatchNorm statistics of a trained checkpoint (SLAB paper, appendix A).

Builds the model and the train dataloader from CONFIG, loads CHECKPOINT, recomputes
every trainable BatchNorm's running mean/var with frozen weights as the average
over N training batches (dropout and drop-path off), and saves a checkpoint with
`state_dict` and `meta` (meta['bn_recalibration'] says what was done). Run it on
the final, fully annealed model (PRepBN g = 0); test the result as usual.

Example:
    python tools/recalibrate_bn.py configs/mini/mask_rcnn_pvt_t.py work_dirs/x/iter_1000.pth \\
        --iters 200 --out work_dirs/x/iter_1000_bn.pth \\
        --cfg-options model.backbone.norm_cfg.type=PRepBN
"""
import argparse
import sys

from mmengine.config import DictAction


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint to recalibrate')
    parser.add_argument('--iters', type=int, required=True, help='number of training batches to average over (>= 1)')
    parser.add_argument('--out', help='output checkpoint (default: <checkpoint>_bn_recalibrated.pth)')
    parser.add_argument('--device', help="device (default: 'cuda' if available, else 'cpu')")
    parser.add_argument('--seed', type=int, default=0, help='seed of the train sampler (default: 0)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. model.backbone.norm_cfg.type=PRepBN')
    return parser.parse_args()


def main():
    args = parse_args()
    if args.iters < 1:
        sys.exit(f'error: --iters must be >= 1, got {args.iters}')
    from slab_mmdet.engine import recalibrate_checkpoint  # heavy (mmdet): after the cheap checks
    try:
        out, layers = recalibrate_checkpoint(args.config, args.checkpoint, args.iters, out=args.out,
                                             cfg_options=args.cfg_options, device=args.device, seed=args.seed)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f'error: {e}')
    print(f'recalibrated {len(layers)} BatchNorm layers over {args.iters} batches of the train set; saved {out}')


if __name__ == '__main__':
    main()
