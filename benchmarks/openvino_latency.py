"""Exported graphs in OpenVINO (CPU plugin) beside ONNX Runtime, in one interleaved run, with
OpenVINO's outputs checked against ONNX Runtime's first.

Each comparison's twin (LayerNorm + softmax SDPA) and SLAB model (fused), random weights as in
benchmarks/onnx_latency.py, exported once per graph kind (backbone + neck, and with
--detector also the whole Mask R-CNN; dynamic H, W, opset 18: what tools/export_onnx.py
writes). Each graph runs at batch 1 in ONNX Runtime (ORT_ENABLE_ALL) and in OpenVINO at f32
(and at bf16 with --bf16), --threads threads each. Before timing, OpenVINO's f32 outputs on the
timing image are compared with ONNX Runtime's: features relative to their largest value,
detections matched as the exporter's check matches them (slab_mmdet.deploy.equivalence);
a difference above --tolerance stops the run. Then --rounds rounds, each running every
(graph, runtime) once in an order rotated by one per round; ratios are medians of per-round
ratios.

    python benchmarks/openvino_latency.py --threads 2 --rounds 6 --size 800x1216 --detector

Writes <out-dir>/openvino_latency.{md,json} and prints the Markdown table.
"""
import argparse
import os
import os.path as osp
import statistics
import time

from bootstrap import REPO
from onnx_latency import COMPARISONS, build, median_ratio, write_record

KINDS = ('features', 'detector')


def run(args):
    import numpy as np
    import onnxruntime as ort
    import torch

    import slab_mmdet  # noqa: F401
    from slab_mmdet.benchmark.report import cpu_model
    from slab_mmdet.deploy.equivalence import runtime_output_differences
    from slab_mmdet.deploy.graph import onnx_session
    from slab_mmdet.deploy.onnx_export import export_onnx
    from slab_mmdet.deploy.openvino_runtime import OpenVinoGraph, import_openvino

    ov = import_openvino()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out_dir, exist_ok=True)
    h, w = args.size
    image = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0)).numpy()
    feeds = {'features': {'images': image}, 'detector': {'images': image, 'image_shape': np.asarray([h, w], np.int64)}}
    kinds = KINDS if args.detector else KINDS[:1]
    precisions = ('f32', 'bf16') if args.bf16 else ('f32',)
    runners, checks = [], []
    for comparison in args.only:
        for name, config, _ in COMPARISONS[comparison][:2]:     # the twin, then the SLAB model
            print(f'[openvino] building {name} ...', flush=True)
            model = build(config)
            for kind in kinds:
                path = osp.join(args.out_dir, f'{comparison}_{len(checks)}_{kind}.onnx')
                info = export_onnx(model, path, detector=kind == 'detector', input_hw=(h, w), logger=lambda *a: None)
                session = onnx_session(path, threads=args.threads)
                want = session.run(None, feeds[kind])
                graph = dict(comparison=comparison, model=name, kind=kind)
                runners.append(dict(graph, runtime='ONNX Runtime', run=lambda s=session, f=feeds[kind]: s.run(None, f),
                                    times=[]))
                for precision in precisions:
                    start = time.perf_counter()
                    compiled = OpenVinoGraph(path, threads=args.threads, precision=precision)
                    compile_s = time.perf_counter() - start
                    got = compiled.run(feeds[kind])
                    within, diff = runtime_output_differences(want, got, info['outputs'], (h, w))
                    checks.append(dict(graph, precision=precision, compile_s=compile_s, diff=diff,
                                       within_tolerance=within(args.tolerance)))
                    print(f'[openvino] {name} {kind} OpenVINO {precision} vs ONNX Runtime: {diff} '
                          f'(compiled in {compile_s:.1f} s)', flush=True)
                    if precision == 'f32' and not within(args.tolerance):
                        raise SystemExit(f'[openvino] {name} {kind}: OpenVINO f32 differs from ONNX Runtime beyond '
                                         f'--tolerance {args.tolerance}: {diff}')
                    runners.append(dict(graph, runtime=f'OpenVINO {precision}',
                                        run=lambda c=compiled, f=feeds[kind]: c.run(f), times=[]))
    total = args.warmup + args.rounds
    for r in range(total):
        for runner in runners[r % len(runners):] + runners[:r % len(runners)]:
            start = time.perf_counter()
            runner['run']()
            if r >= args.warmup:
                runner['times'].append(time.perf_counter() - start)
        print(f'[openvino] round {r + 1}/{total}' + (' (warm-up)' if r < args.warmup else ''), flush=True)

    def find(comparison, model, kind, runtime):
        return next(x for x in runners if (x['comparison'], x['model'], x['kind'], x['runtime'])
                    == (comparison, model, kind, runtime))

    rows = []
    for x in runners:
        ort_runner = find(x['comparison'], x['model'], x['kind'], 'ONNX Runtime')
        twin = find(x['comparison'], COMPARISONS[x['comparison']][0][0], x['kind'], x['runtime'])
        rows.append(dict(comparison=x['comparison'], model=x['model'], kind=x['kind'], runtime=x['runtime'],
                         ms=statistics.median(x['times']) * 1e3,
                         vs_onnxruntime=median_ratio(x['times'], ort_runner['times']),
                         vs_twin=median_ratio(x['times'], twin['times']), all_ms=[t * 1e3 for t in x['times']]))
    header = (f'Batch 1, input 1x3x{h}x{w}, {args.threads} threads, {args.rounds} interleaved rounds after '
              f'{args.warmup} warm-up (ratios: medians of per-round ratios); ONNX Runtime {ort.__version__} '
              f'(CPUExecutionProvider), OpenVINO {ov.get_version()} (CPU plugin, LATENCY hint, 1 stream); '
              f'{cpu_model()}; {time.strftime("%Y-%m-%d")}.')
    lines = [header, '', '| model | graph | runtime | ms (median) | vs ONNX Runtime | vs the twin, same runtime |',
             '| --- | --- | --- | --- | --- | --- |']
    lines += [f'| {row["model"]} | {row["kind"]} | {row["runtime"]} | {row["ms"]:.0f} | {row["vs_onnxruntime"]:.3f} | '
              f'{row["vs_twin"]:.3f} |' for row in rows]
    lines += ['', '| model | graph | OpenVINO precision | compile s | difference from ONNX Runtime |',
              '| --- | --- | --- | --- | --- |']
    lines += [f'| {c["model"]} | {c["kind"]} | {c["precision"]} | {c["compile_s"]:.1f} | {c["diff"]} |' for c in checks]
    write_record(args, 'openvino_latency', lines, dict(cpu=cpu_model(), onnxruntime=ort.__version__,
                                                       openvino=ov.get_version(), rows=rows, checks=checks))
    return rows


def main(argv=None):
    from slab_mmdet.utils import parse_hw
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--size', type=parse_hw, default=(800, 1216), metavar='HxW')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=6)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--only', nargs='+', choices=sorted(COMPARISONS), default=['pvt_s'])
    parser.add_argument('--detector', action='store_true', help='also the whole Mask R-CNN graph')
    parser.add_argument('--bf16', action='store_true', help="also OpenVINO at bf16 (its default on AMX CPUs)")
    parser.add_argument('--tolerance', type=float, default=1e-4,
                        help="largest OpenVINO f32 vs ONNX Runtime difference accepted (the exporter's check's)")
    parser.add_argument('--out-dir', default=osp.join(REPO, 'work_dirs', 'openvino_latency'))
    args = parser.parse_args(argv)
    if args.threads < 1 or args.rounds < 1 or args.warmup < 0 or not args.tolerance > 0:
        parser.error('--threads and --rounds must be >= 1, --warmup >= 0, --tolerance > 0')
    run(args)


if __name__ == '__main__':
    main()
