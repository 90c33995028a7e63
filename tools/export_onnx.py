"""Export a SLAB detector to ONNX -- backbone + neck, or with --detector the whole detector --
checked in ONNX Runtime before the file is kept.

CONFIG + CHECKPOINT is a training config with a trained checkpoint whose PRepBNs have all
reached g = 0 (it is fused here, as tools/fuse_norms.py does), a deploy config with its fused
checkpoint (as tools/fuse_norms.py writes them), or a LayerNorm baseline (exported as it is,
for comparison).

Without --detector the graph takes ``images`` (1, 3, H, W) -- the preprocessed image, as
mmdet's data preprocessor gives it (normalised, padded to multiples of 32) -- and returns
the neck's levels ``feat0``, ``feat1``, ... (with --with-rpn-head also the RPN head's raw
scores and box deltas). With --detector it also takes ``image_shape`` (h, w of the image
before padding) and returns the final detections: ``boxes`` (in the input's pixels; divide
by the preprocessing's scale factor), ``scores``, ``labels`` and ``masks`` (28x28
probabilities per detection), with the config's test_cfg; tools/test_onnx.py evaluates
such a graph on the config's test set. H and W are dynamic unless --static.

After writing the graph the tool runs it in ONNX Runtime (CPU) at the export size and at
the --check sizes and compares it with PyTorch; it fails, leaving no file, if a difference
is above --tolerance, if a normalisation node is left outside the norms meant to stay (the
LayerNorm output norms of the authors' recipe, which are reported by name), or if a model
that still anneals (a PRepBN with g > 0) is given.

Examples:
    python tools/export_onnx.py configs/mask_rcnn_slab_pvt_s.py work_dirs/slab_pvt_s/epoch_12.pth \\
        --out work_dirs/slab_pvt_s/slab_pvt_s_features.onnx
    python tools/export_onnx.py configs/mask_rcnn_slab_pvt_s.py work_dirs/slab_pvt_s/epoch_12.pth \\
        --out work_dirs/slab_pvt_s/slab_pvt_s_detector.onnx --detector
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
    parser.add_argument('--exporter', choices=('torchscript', 'dynamo'), default='torchscript',
                        help="torch's exporter: torchscript (default; torch.onnx.export(..., dynamo=False)) or dynamo "
                             '(torch.export; backbone + neck only; dynamic H, W multiples of 32)')
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument('--with-rpn-head', action='store_true',
                      help="also export the RPN head's raw outputs (rpn_cls{i}, rpn_bbox{i})")
    kind.add_argument('--detector', action='store_true',
                      help='export the whole detector: image to boxes, scores, labels and masks')
    parser.add_argument('--force', action='store_true', help='overwrite --out if it exists')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config settings')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from slab_mmdet.apis.config import resolve_config_path
    try:
        resolve_config_path(args.config)   # a path or a package config (mmdet::...)
    except FileNotFoundError as e:
        raise SystemExit(f'error: {e}')
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f'error: checkpoint {args.checkpoint!r} does not exist')
    if not args.out.endswith('.onnx'):
        raise SystemExit(f'error: --out must name a .onnx file, got {args.out!r}')
    if osp.exists(args.out) and not args.force:
        raise SystemExit(f'error: {args.out} exists; pass --force to overwrite it')
    if not args.tolerance > 0:
        raise SystemExit(f'error: --tolerance must be > 0, got {args.tolerance}')

    if args.exporter == 'dynamo' and args.detector:
        raise SystemExit("error: --exporter dynamo writes backbone + neck; export the whole detector (--detector) "
                         "with the default torchscript exporter")
    if osp.isdir(args.out):
        raise SystemExit(f'error: --out {args.out} is a directory; give a .onnx file name')

    import slab_mmdet  # noqa: F401  (registers the modules)
    from slab_mmdet.deploy.export import export_checked

    try:
        result = export_checked(args.config, args.checkpoint, args.out, detector=args.detector, input_hw=args.shape,
                                check_sizes=args.check, tolerance=args.tolerance, opset=args.opset,
                                static=args.static, with_rpn_head=args.with_rpn_head, cfg_options=args.cfg_options,
                                exporter=args.exporter)
    except (ValueError, OSError) as e:   # not fusable, a checkpoint that does not fit, a failed check
        raise SystemExit(f'error: {e}')
    norms = f'{len(result["kept_norms"])} norm layers kept' if result['kept_norms'] else 'no normalisation node'
    print(f'[export] ok: {result["path"]}: inputs {", ".join(result["inputs"])}, outputs '
          f'{", ".join(result["outputs"])}; {norms}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
