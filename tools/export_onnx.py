"""Export a fused SLAB detector's backbone + neck to ONNX, checked in ONNX Runtime.

CONFIG + CHECKPOINT is either a training config with a trained checkpoint whose PRepBNs
have all reached g = 0 (it is fused here, as tools/fuse_norms.py does), or a deploy
config with its fused checkpoint (as tools/fuse_norms.py writes them). The graph takes
``images`` (1, 3, H, W) -- the preprocessed image, as mmdet's data preprocessor gives
it (normalised, padded to multiples of 32) -- with dynamic H and W, and returns the
neck's levels ``feat0``, ``feat1``, ... in the order of ``model.extract_feat`` (and, with
--with-rpn-head, the RPN head's raw scores and box deltas per level). Proposal decoding,
NMS and the RoI heads are not exported: docs/deploy.md says why (mmdeploy 1.3 does not
run with this stack) and what runs them.

After writing the file the tool runs it in ONNX Runtime (CPU) at the export size and at
the --check sizes, prints the largest relative difference from PyTorch, and fails if
one is above --tolerance, if the graph holds a normalisation node, or if a model that
still anneals (a PRepBN with g > 0) is given.

Example:
    python tools/export_onnx.py configs/mask_rcnn_slab_pvt_s.py work_dirs/slab_pvt_s/epoch_12.pth \\
        --out work_dirs/slab_pvt_s/slab_pvt_s_features.onnx
"""
import argparse
import os.path as osp
import sys

from mmengine.config import DictAction

from slab_mmdet.utils import parse_hw


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='training config (with a g = 0 checkpoint) or deploy config (fused)')
    parser.add_argument('checkpoint', help='the trained (g = 0) or fused checkpoint')
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--shape', type=parse_hw, default=(800, 1216), metavar='HxW',
                        help='example input size the graph is traced at (default: 800x1216)')
    parser.add_argument('--check', type=parse_hw, nargs='*', default=[(608, 800), (736, 1088)], metavar='HxW',
                        help='further sizes ONNX Runtime is checked at (default: 608x800 736x1088)')
    parser.add_argument('--tolerance', type=float, default=1e-4,
                        help='largest relative difference from PyTorch accepted (default: 1e-4)')
    parser.add_argument('--opset', type=int, default=18, help='ONNX opset (default: 18)')
    parser.add_argument('--static', action='store_true', help='fixed input size (--shape) instead of dynamic H, W')
    parser.add_argument('--with-rpn-head', action='store_true',
                        help="also export the RPN head's raw outputs (rpn_cls{i}, rpn_bbox{i})")
    parser.add_argument('--force', action='store_true', help='overwrite --out if it exists')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config settings')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    for path, what in ((args.config, 'config'), (args.checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            raise SystemExit(f'error: {what} {path!r} does not exist')
    if not args.out.endswith('.onnx'):
        raise SystemExit(f'error: --out must name a .onnx file, got {args.out!r}')
    if osp.exists(args.out) and not args.force:
        raise SystemExit(f'error: {args.out} exists; pass --force to overwrite it')
    if not args.tolerance > 0:
        raise SystemExit(f'error: --tolerance must be > 0, got {args.tolerance}')

    import onnx

    import slab_mmdet  # noqa: F401  (registers the modules)
    from slab_mmdet.deploy.onnx_export import check_onnx_features, export_features_onnx, fused_detector, norm_nodes

    try:
        model = fused_detector(args.config, args.checkpoint, args.cfg_options)
    except ValueError as e:
        raise SystemExit(f'error: {e}')
    info = export_features_onnx(model, args.out, input_hw=args.shape, opset=args.opset, dynamic=not args.static,
                                with_rpn_head=args.with_rpn_head)
    norms = norm_nodes(onnx.load(args.out))
    if norms:
        raise SystemExit(f'error: the exported graph holds {len(norms)} normalisation nodes ({sorted(set(norms))}): '
                         'the model was not fully fused')
    sizes = [args.shape] + ([] if args.static else [s for s in args.check if s != args.shape])
    diffs = check_onnx_features(model, args.out, sizes, with_rpn_head=args.with_rpn_head)
    for (h, w), diff in diffs.items():
        print(f'[export] ONNX Runtime vs PyTorch at {h}x{w}: largest relative difference {diff:.2e}')
    worst = max(diffs.values())
    if worst > args.tolerance:
        raise SystemExit(f'error: ONNX Runtime differs from PyTorch by {worst:.2e} > --tolerance {args.tolerance}')
    print(f'[export] ok: {info["path"]}: input images (1, 3, H, W), outputs {", ".join(info["outputs"])}; '
          f'no normalisation node')
    return 0


if __name__ == '__main__':
    sys.exit(main())
