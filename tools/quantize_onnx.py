"""Quantise a graph written by tools/export_onnx.py to int8 (static, QDQ) with ONNX Runtime,
calibrated on a folder of images.

The backbone and neck's Conv/MatMul/Gemm nodes get int8 weights (per output channel) and uint8
activations whose ranges come from running the float graph on the calibration images, each
through CONFIG's test pipeline and data preprocessor (as tools/test_onnx.py feeds the graph);
the heads and post-processing stay in float. A fused SLAB graph has no normalisation node, so
nothing of it stays in float between quantised layers; for a LayerNorm model the tool reports
the LayerNormalization/Softmax nodes left in float. A few dozen training images calibrate
well; evaluate the result with tools/test_onnx.py. With --openvino the graph is quantised by
OpenVINO's own post-training quantisation (NNCF, the optional extra: make setup-openvino)
instead, into an OpenVINO IR (--out FILE.xml, beside it FILE.bin), for OpenVINO to run.

Examples:
    python tools/quantize_onnx.py configs/mini/mask_rcnn_slab_pvt_t.py work_dirs/demo/detector.onnx \\
        --calib data/mini_coco/train --num-images 32 --out work_dirs/demo/detector.int8.onnx
    python tools/test_onnx.py configs/mini/mask_rcnn_slab_pvt_t.py work_dirs/demo/detector.int8.onnx
    python tools/quantize_onnx.py configs/mini/mask_rcnn_slab_pvt_t.py work_dirs/demo/detector.onnx \
        --calib data/mini_coco/train --openvino --out work_dirs/demo/detector.int8.xml
    python tools/test_onnx.py configs/mini/mask_rcnn_slab_pvt_t.py work_dirs/demo/detector.onnx \
        --openvino-ir work_dirs/demo/detector.int8.xml
"""
import argparse
import os.path as osp
import sys

from mmengine.config import DictAction


def parse_args(argv=None):
    from slab_mmdet.deploy.quantize import CALIBRATION_METHODS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='the config the graph was exported from (its test pipeline preprocesses)')
    parser.add_argument('graph', help='the float .onnx graph (tools/export_onnx.py)')
    parser.add_argument('--calib', required=True, metavar='DIR', help='folder of calibration images')
    parser.add_argument('--out', required=True, help='the int8 .onnx file to write (.xml with --openvino)')
    parser.add_argument('--openvino', action='store_true',
                        help='quantise with OpenVINO/NNCF into an OpenVINO IR (--method, --per-tensor do not apply)')
    parser.add_argument('--num-images', type=int, default=32,
                        help='calibration images used, the first N by name (default: 32)')
    parser.add_argument('--method', default=None, choices=CALIBRATION_METHODS,
                        help='how activation ranges are set from the calibration runs (default: MinMax)')
    parser.add_argument('--per-tensor', action='store_true', help='one weight scale per tensor, not per channel')
    parser.add_argument('--force', action='store_true', help='overwrite --out if it exists')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config settings')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from slab_mmdet.apis.config import resolve_config_path
    from slab_mmdet.benchmark.errors import BenchmarkError
    from slab_mmdet.benchmark.images import list_image_dir
    try:
        resolve_config_path(args.config)
    except FileNotFoundError as e:
        raise SystemExit(f'error: {e}')
    if not osp.isfile(args.graph):
        raise SystemExit(f'error: graph {args.graph!r} does not exist (write it with tools/export_onnx.py)')
    suffix = '.xml' if args.openvino else '.onnx'
    if not args.out.endswith(suffix) or osp.isdir(args.out):
        raise SystemExit(f'error: --out must name a {suffix} file{" with --openvino" if args.openvino else ""}, '
                         f'got {args.out!r}')
    if args.openvino and (args.method or args.per_tensor):
        raise SystemExit('error: --method and --per-tensor are for ONNX Runtime\'s quantisation; NNCF (--openvino) '
                         'sets its own ranges and per-channel weights')
    if osp.abspath(args.out) == osp.abspath(args.graph):
        raise SystemExit(f'error: --out {args.out!r} is the float graph itself; give another file name')
    if osp.exists(args.out) and not args.force:
        raise SystemExit(f'error: {args.out} exists; pass --force to overwrite it')
    if args.num_images < 1:
        raise SystemExit(f'error: --num-images must be >= 1, got {args.num_images}')
    try:
        images = list_image_dir(args.calib)[:args.num_images]
    except BenchmarkError as e:
        raise SystemExit(f'error: --calib: {e}')

    import slab_mmdet  # noqa: F401  (registers the modules)
    if args.openvino:
        from slab_mmdet.deploy.quantize import quantize_with_openvino
        try:
            report = quantize_with_openvino(args.graph, args.out, args.config, images, args.cfg_options)
        except (ImportError, ValueError, OSError) as e:   # no extra, a corrupt graph, an unreadable image
            raise SystemExit(f'error: {e}')
        print(f'[int8] ok: {report["path"]}: {report["fake_quantize_nodes"]} FakeQuantize nodes from '
              f'{report["calibration_images"]} images (NNCF)')
        return 0
    from slab_mmdet.deploy.quantize import quantize_graph
    try:
        report = quantize_graph(args.graph, args.out, args.config, images, args.cfg_options,
                                per_channel=not args.per_tensor, method=args.method or 'MinMax')
    except (ValueError, OSError) as e:   # a corrupt graph, an unreadable image, nothing to quantise
        raise SystemExit(f'error: {e}')
    norms = report['float_norm_nodes']
    print(f'[int8] ok: {report["path"]}: {report["quantized_nodes"]} nodes in int8 from {report["calibration_images"]} '
          f'images ({report["method"]}); normalisation left in float: {norms or "none"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
