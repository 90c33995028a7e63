"""Latency of backbone + neck in ONNX Runtime and in PyTorch, side by side in one run.

Every model is the Mask R-CNN of a config with random weights (SLAB models: PRepBN at
g = 0 as the latency record sets it, benchmark.candidates.finish_random_prepbn, then
fused by slab_mmdet.deploy.fuse_detector),
exported the same way (slab_mmdet.deploy.onnx_export.export_onnx: dynamic H, W,
opset 18, the graph tools/export_onnx.py writes) and timed at batch 1 on one input size,
interleaved: for each of --rounds rounds, the models run one after the other in an order
rotated by one per round, each first in ONNX Runtime (CPU, --threads intra-op threads,
ORT_ENABLE_ALL) and then in PyTorch eager (torch.set_num_threads(--threads), inference
mode). Each comparison's first model is its reference: the LayerNorm + softmax twin (same
code, SDPA), then mmdet's model. Ratios are medians of per-round ratios to the reference.

--detector exports and times the whole Mask R-CNN graph (tools/export_onnx.py --detector:
image in, boxes, scores, labels and masks out) instead, in ONNX Runtime only (the eager
whole-detector ratios are the latency record's).

--graph COMPARISON:LABEL=PATH adds a graph exported elsewhere (e.g. by an earlier commit,
for a before/after in the same rounds), timed in ONNX Runtime only.

    python benchmarks/onnx_latency.py --threads 2 --rounds 8 --size 800x1216 --out-dir work_dirs/onnx_latency

Writes <out-dir>/onnx_latency.{md,json} and prints the Markdown table.
"""
import argparse
import json
import os
import os.path as osp
import statistics
import time

from bootstrap import REPO
from slab_mmdet.benchmark.peers import PVTV2_BACKBONES

PVTV2_B2 = PVTV2_BACKBONES['b2']
# comparison -> [(name, config, backbone override)]: the first is the reference of the ratios.
COMPARISONS = {
    'pvt_s': [('PVT-S twin (LN, SDPA)', 'configs/mask_rcnn_pvt_s_twin.py', None),
              ('SLAB-PVT-S fused', 'configs/mask_rcnn_slab_pvt_s.py', None),
              ('PVT-S (mmdet, LN)', 'configs/mask_rcnn_pvt_s.py', None),
              ('PVTv2-b2 (mmdet, LN)', 'configs/mask_rcnn_pvt_s.py', PVTV2_B2)],
    'swin_t': [('Swin-T twin (LN, SDPA)', 'configs/mask_rcnn_swin_t_twin.py', None),
               ('SLAB-Swin-T fused', 'configs/mask_rcnn_slab_swin_t.py', None),
               ('Swin-T (mmdet, LN)', 'configs/mask_rcnn_swin_t.py', None)],
}


def build(config, backbone=None, seed=0):
    """The detector of ``config`` (backbone replaced by ``backbone`` if given), random
    weights, fused if it is a SLAB model; eval mode, CPU."""
    import torch

    from slab_mmdet.apis import load_detector
    from slab_mmdet.benchmark.candidates import finish_random_prepbn
    from slab_mmdet.deploy import fuse_detector

    torch.manual_seed(seed)
    options = None if backbone is None else {'model.backbone': dict(_delete_=True, **backbone)}
    model = load_detector(osp.join(REPO, config), cfg_options=options, init_weights=True)
    if finish_random_prepbn(model):   # a SLAB model: g = 0, as training leaves it, then fused
        fuse_detector(model.eval())
    return model.eval()


def median_ms(values):
    return statistics.median(values) * 1e3


def median_ratio(times, reference):
    """The median over rounds of ``times[i] / reference[i]`` (the same round)."""
    return statistics.median(t / r for t, r in zip(times, reference))


def graph_argument(text):
    """COMPARISON:LABEL=PATH -> (comparison, label, path)."""
    head, sep, path = text.partition('=')
    comparison, colon, label = head.partition(':')
    if not (sep and colon and label and path) or comparison not in COMPARISONS:
        raise argparse.ArgumentTypeError(f'--graph {text!r}: expected COMPARISON:LABEL=PATH with COMPARISON one of '
                                         f'{sorted(COMPARISONS)}')
    return comparison, label, path


def run(args):
    import numpy as np
    import onnxruntime as ort
    import torch

    import slab_mmdet  # noqa: F401
    from slab_mmdet.benchmark.report import cpu_model
    from slab_mmdet.deploy.graph import norm_nodes, onnx_session, read_graph
    from slab_mmdet.deploy.onnx_export import export_onnx

    torch.set_num_threads(args.threads)
    os.makedirs(args.out_dir, exist_ok=True)
    h, w = args.size
    models = []
    for comparison in args.only or COMPARISONS:
        for name, config, backbone in COMPARISONS[comparison]:
            print(f'[onnx-latency] building and exporting {name} ...', flush=True)
            model = build(config, backbone)
            path = osp.join(args.out_dir, f'{comparison}_{len(models)}.onnx')
            export_onnx(model, path, detector=args.detector, input_hw=(h, w), logger=lambda *a: None)
            if args.detector:
                model = None   # timed in ONNX Runtime only
            norms = len(norm_nodes(read_graph(path)))
            models.append(dict(comparison=comparison, name=name, config=config, model=model, path=path,
                               session=onnx_session(path, threads=args.threads), norm_nodes=norms,
                               ort=[], torch=[]))
    for comparison, label, path in args.graph:
        print(f'[onnx-latency] loading {label} from {path} ...', flush=True)
        models.append(dict(comparison=comparison, name=label, config=path, model=None, path=path,
                           session=onnx_session(path, threads=args.threads),
                           norm_nodes=len(norm_nodes(read_graph(path))), ort=[], torch=[]))
    image = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    feed = {'images': image.numpy()}
    if args.detector:
        feed['image_shape'] = np.asarray([h, w], dtype=np.int64)
    total = args.warmup + args.rounds
    for r in range(total):
        order = models[r % len(models):] + models[:r % len(models)]
        for m in order:
            start = time.perf_counter()
            m['session'].run(None, feed)
            t_ort = time.perf_counter() - start
            t_torch = None
            if m['model'] is not None:
                with torch.inference_mode():
                    start = time.perf_counter()
                    m['model'].extract_feat(image)
                    t_torch = time.perf_counter() - start
            if r >= args.warmup:
                m['ort'].append(t_ort)
                m['torch'].append(t_torch)
        print(f'[onnx-latency] round {r + 1}/{total}' + (' (warm-up)' if r < args.warmup else ''), flush=True)

    rows = []
    for comparison in args.only or COMPARISONS:
        group = [m for m in models if m['comparison'] == comparison]
        ref = group[0]
        for m in group:
            eager = m['model'] is not None
            rows.append(dict(comparison=comparison, model=m['name'], config=m['config'], norm_nodes=m['norm_nodes'],
                             ort_ms=median_ms(m['ort']), torch_ms=median_ms(m['torch']) if eager else None,
                             ort_ratio=median_ratio(m['ort'], ref['ort']),
                             torch_ratio=median_ratio(m['torch'], ref['torch']) if eager else None,
                             ort_all_ms=[t * 1e3 for t in m['ort']],
                             torch_all_ms=[t * 1e3 for t in m['torch']] if eager else None))
    cpu = cpu_model()
    what = 'Whole Mask R-CNN graph (`--detector`)' if args.detector else 'Backbone + neck (`extract_feat`)'
    header = (f'{what}, batch 1, input 1x3x{h}x{w}, {args.threads} threads, '
              f'{args.rounds} interleaved rounds after {args.warmup} warm-up (ratio: median of per-round '
              f'ratios); ONNX Runtime '
              f'{ort.__version__} (CPUExecutionProvider) and PyTorch {torch.__version__} eager; {cpu}; '
              f'{time.strftime("%Y-%m-%d")}.')
    lines = [header, '', '| model | ONNX Runtime ms (median) | ratio | PyTorch ms (median) | ratio | '
             'norm nodes in graph |', '| --- | --- | --- | --- | --- | --- |']
    for row in rows:
        eager = ('-', '-') if row['torch_ms'] is None else (f'{row["torch_ms"]:.0f}', f'{row["torch_ratio"]:.3f}')
        lines.append(f'| {row["model"]} | {row["ort_ms"]:.0f} | {row["ort_ratio"]:.3f} | {eager[0]} | {eager[1]} | '
                     f'{row["norm_nodes"]} |')
    write_record(args, 'onnx_latency', lines, dict(cpu=cpu, onnxruntime=ort.__version__, torch=torch.__version__,
                                                   rows=rows))
    return rows


def write_record(args, stem, lines, record):
    """<args.out_dir>/<stem>.md (the table ``lines``) and <stem>.json (``record`` with the run's
    size, threads and rounds); the table printed."""
    table = '\n'.join(lines)
    with open(osp.join(args.out_dir, f'{stem}.md'), 'w') as f:
        f.write(table + '\n')
    with open(osp.join(args.out_dir, f'{stem}.json'), 'w') as f:
        json.dump(dict(size=list(args.size), threads=args.threads, rounds=args.rounds, warmup=args.warmup, **record),
                  f, indent=1, default=str)
    print(table)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from slab_mmdet.utils import parse_hw
    parser.add_argument('--size', type=parse_hw, default=(800, 1216), metavar='HxW')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--only', nargs='+', choices=sorted(COMPARISONS))
    parser.add_argument('--detector', action='store_true',
                        help='the whole Mask R-CNN graph, ONNX Runtime only (default: backbone + neck)')
    parser.add_argument('--graph', type=graph_argument, action='append', default=[], metavar='COMPARISON:LABEL=PATH',
                        help='also time this exported graph (ONNX Runtime only) in the rounds of COMPARISON')
    parser.add_argument('--out-dir', default=osp.join(REPO, 'work_dirs', 'onnx_latency'))
    args = parser.parse_args(argv)
    if args.threads < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error('--threads and --rounds must be >= 1, --warmup >= 0')
    for comparison, _, path in args.graph:
        if args.only and comparison not in args.only:
            parser.error(f'--graph for {comparison!r}, which --only {" ".join(args.only)} leaves out')
        if not osp.isfile(path):
            parser.error(f'--graph: no file {path}')
    run(args)


if __name__ == '__main__':
    main()
