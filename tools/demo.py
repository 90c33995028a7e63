"""The main job on the bundled mini COCO, end to end (what `make demo` runs).

Makes mini COCO if needed, trains a SLAB-PVT-T Mask R-CNN from scratch on the CPU while
PRepBN anneals from g = 1 to g = 0, evaluates COCO bbox/segm mAP on the val split, fuses
the norms (checking fused = unfused) and evaluates the fused model, times at batch 1 the
backbones at COCO test resolution (the trained SLAB-PVT-T fused vs the LayerNorm PVT-T
and PVTv2-b1) and the whole detectors at mini-COCO size (fused vs unfused vs the LayerNorm
PVT-T), and writes report.md (with PNGs of the loss/g curves and latency bars) to
--out-dir. About 12 minutes on 2 cores.

Example:
    python tools/demo.py --out-dir work_dirs/demo
"""
import argparse
import os.path as osp

from mmengine.config import DictAction

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out-dir', default='work_dirs/demo', help='report and artefacts (default: work_dirs/demo)')
    parser.add_argument('--data-root', default='data/mini_coco', help='mini COCO location (default: data/mini_coco)')
    parser.add_argument('--config', default=osp.join(REPO_ROOT, 'configs/mini/mask_rcnn_slab_pvt_t.py'),
                        help='the model to train (default: configs/mini/mask_rcnn_slab_pvt_t.py)')
    parser.add_argument('--baseline', default=osp.join(REPO_ROOT, 'configs/mini/mask_rcnn_pvt_t.py'),
                        help='the LayerNorm baseline of the latency comparisons (with its backbone replaced by '
                             "mmdet's PVTv2-b1, also the efficient peer of the COCO-resolution one)")
    # Defaults sized so that `make demo` stays under 12 minutes on 2 cores.
    parser.add_argument('--num-images', type=int, default=10,
                        help='timed images per model, detectors at mini-COCO size (default: 10)')
    parser.add_argument('--coco-size-images', type=int, default=3,
                        help='timed images per model, backbones at COCO test resolution (default: 3)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed images per model (default: 1)')
    parser.add_argument('--threads', type=int, default=None, help='torch threads for the benchmark')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override settings of --config')
    args = parser.parse_args(argv)
    for path in (args.config, args.baseline):
        if not osp.isfile(path):
            parser.error(f'config not found: {path}')
    if args.num_images < 1 or args.coco_size_images < 1 or args.warmup < 0:
        parser.error(f'--num-images and --coco-size-images must be >= 1 and --warmup >= 0, got '
                     f'{args.num_images}, {args.coco_size_images} and {args.warmup}')
    return args


def main(argv=None):
    args = parse_args(argv)
    from slab_mmdet.demo import run_demo
    run_demo(args.out_dir, args.data_root, args.config, args.baseline, args.num_images, args.warmup, args.threads,
             args.cfg_options, coco_size_images=args.coco_size_images)


if __name__ == '__main__':
    main()
