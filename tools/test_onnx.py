"""Evaluate an exported whole-detector ONNX graph on a config's test set, with mmdet's metric.

MODEL.onnx is a graph written by ``tools/export_onnx.py CONFIG CHECKPOINT --out MODEL.onnx
--detector``. Each test image goes through CONFIG's test pipeline and data preprocessor (as
in ``tools/test.py``), the graph runs in ONNX Runtime (CPU), the detections are mapped back
to the original image (masks pasted) and evaluated with the config's test evaluator; the
metrics are printed as mmdet prints them (``coco/bbox_mAP: ...``). No PyTorch model is built.
With --openvino the graph runs in OpenVINO (the optional extra) instead; --openvino-ir runs an
OpenVINO IR of it (tools/quantize_onnx.py --openvino), MODEL.onnx still giving its metadata.

Examples:
    python tools/test_onnx.py configs/mask_rcnn_slab_pvt_s.py work_dirs/slab_pvt_s/detector.onnx
    python tools/test_onnx.py configs/mini/mask_rcnn_slab_pvt_t.py detector.onnx \\
        --cfg-options test_dataloader.dataset.data_root=data/mini_coco/
"""
import argparse
import json
import os.path as osp
import sys

from mmengine.config import DictAction


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='the config whose test set and pipeline are used (the one exported)')
    parser.add_argument('model', metavar='MODEL.onnx', help='a whole-detector graph (export_onnx.py --detector)')
    parser.add_argument('--threads', type=int, default=None, help='the runtime\'s threads (default: its own)')
    parser.add_argument('--openvino', action='store_true', help='run the graph in OpenVINO (f32), not ONNX Runtime')
    from slab_mmdet.deploy.openvino_runtime import PRECISIONS
    parser.add_argument('--openvino-precision', default=PRECISIONS[0], choices=PRECISIONS,
                        help='OpenVINO\'s precision (default f32; bf16 runs on CPUs with AMX or AVX-512 BF16)')
    parser.add_argument('--openvino-ir', default=None, metavar='FILE.xml',
                        help='run this OpenVINO IR of MODEL.onnx (e.g. its int8 version) in OpenVINO')
    parser.add_argument('--max-images', type=int, default=None, help='evaluate only the first N test images')
    parser.add_argument('--out', default=None, help='also write the metrics and timings to this .json file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config settings')
    args = parser.parse_args(argv)
    for path, what in ((args.config, 'config'), (args.model, 'model')):
        if not osp.isfile(path):
            parser.error(f'{what} not found: {path}')
    if not args.model.endswith('.onnx'):
        parser.error(f'MODEL must be a .onnx file, got {args.model}')
    if args.openvino_ir is not None:
        if not (args.openvino_ir.endswith('.xml') and osp.isfile(args.openvino_ir)):
            parser.error(f'--openvino-ir must name an existing .xml file, got {args.openvino_ir}')
        args.openvino = True
    if args.openvino_precision != PRECISIONS[0]:
        args.openvino = True
    for name in ('threads', 'max_images'):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got {value}')
    return args


def main(argv=None):
    args = parse_args(argv)
    import numpy as np

    import slab_mmdet  # noqa: F401  (registers the modules)
    from slab_mmdet.deploy.onnx_detector import evaluate_onnx_detector
    runtime = 'openvino' if args.openvino else 'onnxruntime'

    try:
        metrics, times = evaluate_onnx_detector(args.config, args.model, args.cfg_options, args.threads,
                                                args.max_images, runtime=runtime, openvino_ir=args.openvino_ir,
                                                openvino_precision=args.openvino_precision)
    except (ImportError, ValueError, FileNotFoundError) as e:   # no extra, not a detector graph, bad input, no dataset
        raise SystemExit(f'error: {e}')
    for key, value in metrics.items():
        print(f'{key}: {value:.4f}' if isinstance(value, float) else f'{key}: {value}')
    print(f'{runtime}: {len(times)} images, {np.mean(times) * 1e3:.1f} ms per image (median '
          f'{np.median(times) * 1e3:.1f})')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(metrics=metrics, seconds_per_image=times), f, indent=1)
    return metrics


if __name__ == '__main__':
    sys.exit(0 if main() is not None else 1)
