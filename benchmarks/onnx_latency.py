"""Latency of backbone + neck in ONNX Runtime and in PyTorch, side by side in one run.

Every model is the Mask R-CNN of a config with random weights (SLAB models: PRepBN at
g = 0 as the latency record sets it, benchmark.candidates.finish_random_prepbn, then
fused by slab_mmdet.deploy.fuse_detector),
exported the same way (slab_mmdet.deploy.onnx_export.export_onnx: dynamic H, W,
opset 18) and timed at batch 1 on one input size, interleaved: for each of --rounds
rounds, the models run one after the other in an order rotated by one per round, each
first in ONNX Runtime (CPU, --threads intra-op threads) and then in PyTorch eager
(torch.set_num_threads(--threads), inference mode). Ratios are taken against the first
model of each comparison, per runtime, from the medians.

    python benchmarks/onnx_latency.py --threads 2 --rounds 10 --size 800x1088 --out-dir work_dirs/onnx_latency

Writes <out-dir>/onnx_latency.{md,json} and prints the Markdown table.
"""
import argparse
import json
import os
import os.path as osp
import platform
import statistics
import time

from bootstrap import REPO
from slab_mmdet.benchmark.peers import PVTV2_BACKBONES

PVTV2_B2 = PVTV2_BACKBONES['b2']
# comparison -> [(name, config, backbone override)]: the first is the reference of the ratios.
COMPARISONS = {
    'pvt_s': [('PVT-S (mmdet, LN)', 'configs/mask_rcnn_pvt_s.py', None),
              ('SLAB-PVT-S fused', 'configs/mask_rcnn_slab_pvt_s.py', None),
              ('PVTv2-b2 (mmdet, LN)', 'configs/mask_rcnn_pvt_s.py', PVTV2_B2)],
    'swin_t': [('Swin-T (mmdet, LN)', 'configs/mask_rcnn_swin_t.py', None),
               ('SLAB-Swin-T fused', 'configs/mask_rcnn_slab_swin_t.py', None)],
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


def run(args):
    import onnxruntime as ort
    import torch

    import slab_mmdet  # noqa: F401
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
            export_onnx(model, path, input_hw=(h, w), logger=lambda *a: None)
            norms = len(norm_nodes(read_graph(path)))
            models.append(dict(comparison=comparison, name=name, config=config, model=model, path=path,
                               session=onnx_session(path, threads=args.threads), norm_nodes=norms,
                               ort=[], torch=[]))
    image = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    feed = image.numpy()
    total = args.warmup + args.rounds
    for r in range(total):
        order = models[r % len(models):] + models[:r % len(models)]
        for m in order:
            start = time.perf_counter()
            m['session'].run(None, {'images': feed})
            t_ort = time.perf_counter() - start
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
            rows.append(dict(comparison=comparison, model=m['name'], config=m['config'], norm_nodes=m['norm_nodes'],
                             ort_ms=median_ms(m['ort']), torch_ms=median_ms(m['torch']),
                             ort_ratio=median_ms(m['ort']) / median_ms(ref['ort']),
                             torch_ratio=median_ms(m['torch']) / median_ms(ref['torch']),
                             ort_all_ms=[t * 1e3 for t in m['ort']], torch_all_ms=[t * 1e3 for t in m['torch']]))
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    header = (f'Backbone + neck (`extract_feat`), batch 1, input 1x3x{h}x{w}, {args.threads} threads, '
              f'{args.rounds} interleaved rounds after {args.warmup} warm-up; ONNX Runtime '
              f'{ort.__version__} (CPUExecutionProvider) and PyTorch {torch.__version__} eager; {cpu}; '
              f'{time.strftime("%Y-%m-%d")}.')
    lines = [header, '', '| model | ONNX Runtime ms (median) | ratio | PyTorch ms (median) | ratio | '
             'norm nodes in graph |', '| --- | --- | --- | --- | --- | --- |']
    for row in rows:
        lines.append(f'| {row["model"]} | {row["ort_ms"]:.0f} | {row["ort_ratio"]:.2f} | {row["torch_ms"]:.0f} | '
                     f'{row["torch_ratio"]:.2f} | {row["norm_nodes"]} |')
    table = '\n'.join(lines)
    with open(osp.join(args.out_dir, 'onnx_latency.md'), 'w') as f:
        f.write(table + '\n')
    with open(osp.join(args.out_dir, 'onnx_latency.json'), 'w') as f:
        json.dump(dict(size=[h, w], threads=args.threads, rounds=args.rounds, warmup=args.warmup, cpu=cpu,
                       onnxruntime=ort.__version__, torch=torch.__version__, rows=rows), f, indent=1)
    print(table)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from slab_mmdet.utils import parse_hw
    parser.add_argument('--size', type=parse_hw, default=(800, 1088), metavar='HxW')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--only', nargs='+', choices=sorted(COMPARISONS))
    parser.add_argument('--out-dir', default=osp.join(REPO, 'work_dirs', 'onnx_latency'))
    args = parser.parse_args(argv)
    if args.threads < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error('--threads and --rounds must be >= 1, --warmup >= 0')
    run(args)


if __name__ == '__main__':
    main()
