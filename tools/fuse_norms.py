"""Fold every norm of a trained SLAB detector into its neighbouring layers.

Loads CHECKPOINT into the detector of CONFIG, fuses it (PRepBN/RepBN with g = 0 fold
into the following projections or the preceding patch-embedding convs; the
backbone's output norms into the FPN lateral convs), checks on a real image through
the config's test pipeline that features and detections are unchanged, and writes
into OUT_DIR:

    <config>_deploy.py     the config with backbone deploy=True (runs with mmdet's
                           tools/test.py, DetInferencer, `mim test`)
    <checkpoint>_fused.pth the fused weights, which load strictly into it

Refuses a model that is still annealing (a PRepBN with g > 0) or has LayerNorms.

Example:
    python tools/fuse_norms.py configs/mask_rcnn_slab_pvt_s.py work_dirs/slab_pvt_s/epoch_12.pth \\
        --out-dir work_dirs/slab_pvt_s/deploy
"""
import argparse
import os.path as osp
import sys

from mmengine.config import DictAction


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='the (training) config of the model')
    parser.add_argument('checkpoint', help='the trained checkpoint (all PRepBN at g = 0)')
    parser.add_argument('--out-dir', required=True, help='where to write the deploy config and fused checkpoint')
    parser.add_argument('--image', help='image for the equivalence check (default: the first test image)')
    parser.add_argument('--tolerance', type=float, default=1e-4,
                        help="largest relative difference of the features accepted (default: 1e-4)")
    parser.add_argument('--detection-tolerance', type=float, default=None,
                        help="largest difference of the detections' scores (and boxes, relative to the image's "
                             "longer side) accepted; the heads amplify the features' float-level differences "
                             "(default: slab_mmdet.deploy.fuse.DETECTION_TOLERANCE, 1e-3)")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config settings')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    for path, what in ((args.config, 'config'), (args.checkpoint, 'checkpoint'), (args.image, 'image')):
        if path is not None and not osp.isfile(path):
            sys.exit(f'fuse_norms: {what} not found: {path}')
    if osp.exists(args.out_dir) and not osp.isdir(args.out_dir):
        sys.exit(f'fuse_norms: --out-dir {args.out_dir} exists and is not a directory')
    for flag in ('tolerance', 'detection_tolerance'):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            sys.exit(f'fuse_norms: --{flag.replace("_", "-")} must be > 0, got {value}')
    from slab_mmdet.deploy.fuse import DETECTION_TOLERANCE, fuse_checkpoint
    try:
        result = fuse_checkpoint(args.config, args.checkpoint, args.out_dir, image=args.image,
                                 cfg_options=args.cfg_options, tolerance=args.tolerance,
                                 detection_tolerance=args.detection_tolerance or DETECTION_TOLERANCE)
    except (ValueError, FileNotFoundError) as e:   # FusionError, a checkpoint that does not fit, a missing image
        sys.exit(f'fuse_norms: {e}')
    print(f'norm layers removed: {result["report"]["removed_norms"]}')
    print(f'largest difference: features {result["diff"]["features"]:.3e} (relative); '
          f'detections {result["diff"]["detections"]}')
    print(f'deploy config: {result["config"]}\nfused checkpoint: {result["checkpoint"]}')


if __name__ == '__main__':
    main()
