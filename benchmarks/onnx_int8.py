"""Int8 post-training quantisation of whole-detector graphs, float against int8, for trained
models: mini COCO bbox/segm mAP in ONNX Runtime, and batch-1 latency at COCO test resolution
(images resized as the COCO configs do, 1333x800) of the whole detector in PyTorch eager,
ONNX Runtime float and ONNX Runtime int8, and of backbone + neck alone (float and int8).

Each MODEL is ``NAME=CONFIG:CHECKPOINT`` (a trained mini COCO model; SLAB models are fused on
export). The backbone and neck are quantised (QDQ, per-channel int8 weights, int8
activations calibrated on --num-calib mini COCO train images through the config's test
pipeline); the heads and post-processing stay in float. Timings interleave every variant of
every model image by image (the order reversed every other round); ratios are of medians.

With --openvino (the optional extra) the same float graphs also run in OpenVINO (f32), and
OpenVINO's own int8 (NNCF, slab_mmdet.deploy.quantize.quantize_with_openvino, the
same calibration images and parts) is evaluated and timed beside them; --no-eager leaves the
PyTorch variant out (memory).

    python benchmarks/onnx_int8.py --threads 2 --rounds 4 --images 3 \\
        slab_pvt_t=configs/mini/mask_rcnn_slab_pvt_t.py:work_dirs/demo/train/epoch_5.pth \\
        pvt_t_twin=configs/mini/mask_rcnn_pvt_t_twin.py:work_dirs/pvt_t_twin/epoch_5.pth
"""
import argparse
import glob
import json
import os
import os.path as osp
import statistics
import time

from bootstrap import REPO, command_line
COCO_SCALE = (1333, 800)


def parse_model(text):
    name, _, rest = text.partition('=')
    config, _, checkpoint = rest.partition(':')
    if not (name and config and checkpoint):
        raise argparse.ArgumentTypeError(f'expected NAME=CONFIG:CHECKPOINT, got {text!r}')
    for path in (config, checkpoint):
        if not osp.isfile(path):
            raise argparse.ArgumentTypeError(f'{path} does not exist')
    return name, config, checkpoint


def prepare(name, config, checkpoint, args, log):
    """Export float graphs (detector, features), quantise both; returns the paths and reports."""
    from slab_mmdet.deploy.export import export_checked
    from slab_mmdet.deploy.quantize import quantize_graph
    out = osp.join(args.out_dir, name)
    os.makedirs(out, exist_ok=True)
    calib = sorted(glob.glob(osp.join(args.data_root, 'train', '*.jpg')))[:args.num_calib]
    options = {'test_dataloader.dataset.data_root': args.data_root.rstrip('/') + '/'}
    paths, reports = {}, {}
    for kind in ('detector', 'features'):
        paths[f'{kind}_float'] = osp.join(out, f'{kind}.onnx')
        export_checked(config, checkpoint, paths[f'{kind}_float'], detector=kind == 'detector', input_hw=(256, 320),
                       check_sizes=[(192, 320)], cfg_options=options, logger=log)
        paths[f'{kind}_int8'] = osp.join(out, f'{kind}.int8.onnx')
        reports[kind] = quantize_graph(paths[f'{kind}_float'], paths[f'{kind}_int8'], config, calib, options,
                                       method=args.method, op_types=args.ops, logger=log)
        if args.openvino:
            from slab_mmdet.deploy.quantize import quantize_with_openvino
            paths[f'{kind}_ov_int8'] = osp.join(out, f'{kind}.nncf_int8.xml')
            reports[f'{kind}_openvino'] = quantize_with_openvino(paths[f'{kind}_float'], paths[f'{kind}_ov_int8'],
                                                                 config, calib, options, logger=log)
    return paths, reports


def accuracy(config, paths, args, log):
    from slab_mmdet.deploy.onnx_detector import evaluate_onnx_detector
    options = {'test_dataloader.dataset.data_root': args.data_root.rstrip('/') + '/',
               'test_evaluator.ann_file': osp.join(args.data_root, 'annotations', 'instances_val.json')}
    result = {}
    variants = [('float', {}), ('int8', {})]
    if args.openvino:
        variants += [('OpenVINO float', dict(runtime='openvino')),
                     ('OpenVINO int8', dict(runtime='openvino', openvino_ir=paths['detector_ov_int8']))]
    for kind, how in variants:
        graph = paths['detector_int8' if kind == 'int8' else 'detector_float']
        metrics, _ = evaluate_onnx_detector(config, graph, options, args.threads, log=None, **how)
        result[kind] = {k.split('/')[-1]: metrics[k] for k in ('coco/bbox_mAP', 'coco/segm_mAP')}
        log(f'[int8] {kind}: {how.get("openvino_ir", graph)}: {result[kind]}')
    return result


def latency(models, args, log):
    """Median ms per variant, every variant of every model interleaved image by image."""
    import numpy as np
    import torch

    from slab_mmdet import apis
    from slab_mmdet.benchmark import resized_test_pipeline_options
    from slab_mmdet.deploy import deployable_detector
    from slab_mmdet.deploy.onnx_detector import OnnxDetector, Preprocessor
    from slab_mmdet.deploy.graph import onnx_session
    from slab_mmdet.benchmark.report import paired_ratio
    images = sorted(glob.glob(osp.join(args.data_root, 'val', '*.jpg')))[:args.images]
    runs = []   # (model, variant, callable)
    for name, config, checkpoint, paths in models:
        options = {'test_dataloader.dataset.data_root': args.data_root.rstrip('/') + '/'}
        options.update(resized_test_pipeline_options(apis.load_config(config, options), COCO_SCALE))
        preprocess = Preprocessor(config, options)
        inputs = [preprocess(image) for image in images]
        model, _, _ = deployable_detector(config, checkpoint, options, logger=None)
        feeds = [(x, s.metainfo['img_shape']) for x, s in inputs]
        samples = [s for _, s in inputs]

        def eager(i, model=model, feeds=feeds, samples=samples):
            with torch.no_grad():
                model.predict(torch.from_numpy(feeds[i][0]), [samples[i]], rescale=True)
        if not args.no_eager:
            runs.append((name, 'PyTorch eager', eager))
        for kind in ('float', 'int8'):
            detector = OnnxDetector(paths[f'detector_{kind}'], args.threads)
            runs.append((name, f'ORT {kind}', lambda i, d=detector, f=feeds: d.run(*f[i])))
        for kind in ('float', 'int8'):
            session = onnx_session(paths[f'features_{kind}'], args.threads)
            runs.append((name, f'ORT backbone+neck {kind}',
                         lambda i, s=session, f=feeds: s.run(None, {'images': f[i][0]})))
        if args.openvino:
            from slab_mmdet.deploy.openvino_runtime import OpenVinoGraph
            for kind, ir in (('float', None), ('int8', paths['detector_ov_int8'])):
                detector = OnnxDetector(paths['detector_float'], args.threads, 'openvino', ir)
                runs.append((name, f'OV {kind}', lambda i, d=detector, f=feeds: d.run(*f[i])))
            for kind, graph in (('float', paths['features_float']), ('int8', paths['features_ov_int8'])):
                compiled = OpenVinoGraph(graph, threads=args.threads)
                runs.append((name, f'OV backbone+neck {kind}',
                             lambda i, c=compiled, f=feeds: c.run({'images': f[i][0]})))
        log(f'[int8] {name}: inputs {[tuple(x.shape[2:]) for x, _ in feeds]}')
    for _, _, run in runs:   # warm-up
        run(0)
    times = {(m, v): [] for m, v, _ in runs}
    for r in range(args.rounds):
        for i in range(len(images)):
            order = runs if (r + i) % 2 == 0 else runs[::-1]
            for m, v, run in order:
                start = time.perf_counter()
                run(i)
                times[(m, v)].append(time.perf_counter() - start)
    result = {f'{m} | {v}': dict(median_ms=1e3 * statistics.median(t), mean_ms=1e3 * float(np.mean(t)), n=len(t))
              for (m, v), t in times.items()}
    # Paired ratios: the same image in the same round, run side by side.
    for m in dict.fromkeys(m for m, _, _ in runs):
        pairs = [(f'{rt} {part}int8', f'{rt} {part}float', f'{rt} int8/float {part or "whole "}(paired)')
                 for rt in (('ORT', 'OV') if args.openvino else ('ORT',)) for part in ('', 'backbone+neck ')]
        if args.openvino:
            pairs += [(f'OV {part}int8', f'ORT {part}float', f'OV int8 / ORT float {part or "whole "}(paired)')
                      for part in ('', 'backbone+neck ')]
        if not args.no_eager:
            pairs.append(('ORT float', 'PyTorch eager', 'ORT float/eager (paired)'))
        for numerator, denominator, label in pairs:
            result[f'{m} | {label}'] = paired_ratio(times[(m, numerator)], times[(m, denominator)])
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('models', nargs='+', type=parse_model, metavar='NAME=CONFIG:CHECKPOINT')
    parser.add_argument('--data-root', default=osp.join(REPO, 'data', 'mini_coco'))
    parser.add_argument('--num-calib', type=int, default=32, help='calibration images (mini COCO train)')
    parser.add_argument('--method', default='MinMax', choices=('MinMax', 'Percentile', 'Entropy'))
    parser.add_argument('--ops', default=None, metavar='OP,OP,...',
                        help='ONNX op types to quantise, comma-separated (default: Conv,MatMul,Gemm)')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--images', type=int, default=3, help='timed images at COCO resolution')
    parser.add_argument('--rounds', type=int, default=4)
    parser.add_argument('--skip-accuracy', action='store_true')
    parser.add_argument('--openvino', action='store_true',
                        help='also OpenVINO: the float graphs and NNCF int8 (the optional extra)')
    parser.add_argument('--no-eager', action='store_true', help='leave PyTorch eager out of the timings')
    parser.add_argument('--out-dir', default=osp.join(REPO, 'work_dirs', 'benchmarks', 'onnx_int8'))
    args = parser.parse_args(argv)
    if args.ops is None:
        from slab_mmdet.deploy.quantize import QUANTIZED_OPS
        args.ops = list(QUANTIZED_OPS)
    else:
        args.ops = [op for op in args.ops.split(',') if op]
    if min(args.num_calib, args.threads, args.images, args.rounds) < 1:
        parser.error('--num-calib, --threads, --images and --rounds must be >= 1')
    if args.openvino:
        from slab_mmdet.deploy.openvino_runtime import import_nncf, import_openvino
        try:
            import_openvino(), import_nncf()
        except ImportError as e:
            parser.error(f'--openvino: {e}')
    import torch
    torch.set_num_threads(args.threads)
    log = print
    prepared, record = [], dict(command=command_line(__file__, argv),
                                threads=args.threads, method=args.method, num_calib=args.num_calib, ops=args.ops,
                                models={})
    for name, config, checkpoint in args.models:
        paths, reports = prepare(name, config, checkpoint, args, log)
        entry = dict(config=config, checkpoint=checkpoint, quantization=reports)
        if not args.skip_accuracy:
            entry['accuracy'] = accuracy(config, paths, args, log)
        record['models'][name] = entry
        prepared.append((name, config, checkpoint, paths))
    record['latency'] = latency(prepared, args, log)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(osp.join(args.out_dir, 'onnx_int8.json'), 'w') as f:
        json.dump(record, f, indent=1, default=str)
    print('\n| model | variant | median ms or ratio (p10-p90) |\n|---|---|---:|')
    for key, value in record['latency'].items():
        model, variant = key.split(' | ')
        shown = (f'{value["median_ms"]:.0f}' if 'median_ms' in value else
                 f'{value["median"]:.2f} ({value["p10"]:.2f}-{value["p90"]:.2f})')
        print(f'| {model} | {variant} | {shown} |')
    for name, entry in record['models'].items():
        acc = entry.get('accuracy', {})
        print(f'{name}: float {acc.get("float")}, int8 {acc.get("int8")}; left in float (backbone+neck): '
              f'{entry["quantization"]["features"]["float_nodes"]}')
    return record


if __name__ == '__main__':
    main()
