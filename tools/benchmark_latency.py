"""Batch-1 latency of mmdet detectors (or their backbones), compared fairly in one run.

Each model runs on the same real images through its config's test pipeline; loading and
preprocessing happen before the clock starts, and only the forward (model.predict) is
timed. Several configs, and fused variants of each (--fuse both; a model with nothing to
fold, such as a LayerNorm baseline, then runs unfused only), are interleaved image by image
after warm-up (A B C, B C A, C A B, ...), so that machine drift hits all alike. Reports mean,
median, p90, p99, std, images/s, ratios to the first model, peak memory and a per-part
breakdown, and writes latency.md, latency.json (with every raw timing) and latency.png to
--out-dir. See docs/benchmark_tool.md.

Examples:
    python tools/benchmark_latency.py configs/mask_rcnn_slab_pvt_s.py --twin --fuse --mini --threads 2 \\
        --num-images 10 --warmup 1
    python tools/benchmark_latency.py configs/mask_rcnn_pvt_s.py configs/mask_rcnn_pvt_s_prepbn.py \\
        --device cuda --num-images 100 --warmup 10 --fuse both
    python tools/benchmark_latency.py configs/mini/mask_rcnn_pvt_t.py --mini --device cpu --threads 4
    python tools/benchmark_latency.py mmdet::retinanet/retinanet_r18_fpn_1x_coco.py --images demo/ --part backbone
"""
import argparse
import os.path as osp
import shlex
import sys
import time

from mmengine.config import DictAction

from slab_mmdet.benchmark import (BREAKDOWN_MODES, COMPILE_MODES, COMPILE_SHAPES, CPU_ALLOCATOR_MODES,
                                  DEFAULT_MINI_ROOT, FUSE_MODES, TARGETS, BenchmarkError, render_markdown,
                                  run_benchmark)


def _int_at_least(low):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected an integer >= {low}, got {text!r}')
        if value < low:
            raise argparse.ArgumentTypeError(f'must be >= {low}, got {value}')
        return value
    return parse


def build_parser():
    parser = argparse.ArgumentParser(prog='benchmark_latency.py', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('configs', nargs='+', metavar='CONFIG',
                        help='config files (or package configs such as mmdet::retinanet/...py); the first is '
                             'the reference for the ratios')
    parser.add_argument('--checkpoint', nargs='+', default=[], metavar='CKPT',
                        help='zero or one checkpoint per config, same order (default: random weights)')
    parser.add_argument('--fuse', nargs='?', const='yes', default='none', choices=FUSE_MODES,
                        help='fold norms with slab_mmdet.deploy.fused_copy: yes = fused only, both = unfused '
                             'and fused variants (bare --fuse means yes; default: none)')
    parser.add_argument('--device', default=None,
                        help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    parser.add_argument('--threads', type=_int_at_least(1), default=None,
                        help='torch.set_num_threads(N) (default: leave torch\'s setting)')
    parser.add_argument('--num-images', type=_int_at_least(1), default=100,
                        help='timed images per model (default: 100; fewer available images are reused)')
    parser.add_argument('--warmup', type=_int_at_least(0), default=10,
                        help='untimed warm-up forwards per model (default: 10)')
    source = parser.add_mutually_exclusive_group()
    source.add_argument('--images', metavar='DIR', default=None,
                        help='a folder of images (jpg/jpeg/png/bmp) instead of the config\'s test dataset')
    source.add_argument('--mini', nargs='?', const=DEFAULT_MINI_ROOT, default=None, metavar='DIR',
                        help=f'the mini COCO val split (default DIR: {DEFAULT_MINI_ROOT}; '
                             f'made by tools/make_mini_coco.py)')
    parser.add_argument('--twin', action='store_true',
                        help='also time the first config\'s LayerNorm + softmax twin (same arch and code, softmax '
                             'attention and LayerNorm everywhere, random weights), first: the reference of the '
                             'ratios, i.e. what SLAB itself buys. Needs a SLAB backbone')
    parser.add_argument('--compile', nargs='?', const='default', default=None, choices=COMPILE_MODES,
                        metavar='MODE', help='put every model\'s backbone and neck through torch.compile (inductor) '
                                             f'in MODE ({", ".join(COMPILE_MODES)}; bare --compile: default); the '
                                             'warm-up then covers every distinct image and the report gives each '
                                             'model\'s first (compiling) forward')
    parser.add_argument('--compile-shapes', choices=COMPILE_SHAPES, default='automatic',
                        help='with --compile: automatic (torch\'s: the second input size makes H and W symbolic, '
                             'one graph for all sizes) or static (one graph per input size: slower warm-up, for '
                             'models whose size arithmetic does not compile symbolically, e.g. SLAB-Swin)')
    parser.add_argument('--shared-boxes', action='store_true',
                        help='two-stage detectors: after computing their own, every model\'s heads continue with '
                             'the first model\'s proposals and detections (recorded in an untimed pass), so that '
                             'models with random weights do the same head work')
    parser.add_argument('--part', choices=TARGETS, default='detector',
                        help='what to time: the whole detector (default) or model.backbone(inputs) alone')
    parser.add_argument('--breakdown', choices=BREAKDOWN_MODES, default='auto',
                        help='per-part timing: auto (same pass on CPU, extra interleaved pass on CUDA), '
                             'same-pass, extra-pass or off')
    parser.add_argument('--cpu-allocator', choices=CPU_ALLOCATOR_MODES, default='reuse',
                        help="CPU: reuse (default) keeps the memory a forward frees for the next one, as jemalloc or "
                             "tcmalloc would; system leaves glibc's default, which maps every block over 32 MiB "
                             "afresh and faults its pages in at every image (see docs/benchmark_tool.md)")
    parser.add_argument('--out-dir', default=None,
                        help='where to write latency.{md,json,png} (default: work_dirs/benchmark_latency/<time>)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                        help='override settings of every config, e.g. model.test_cfg.rcnn.max_per_img=50')
    return parser


def main(argv=None):
    """Run the benchmark; `argv` defaults to sys.argv[1:]. Prints the Markdown table at the end."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None:
        command = shlex.join([osp.basename(sys.executable)] + sys.argv)
    else:
        command = shlex.join(['python', 'tools/benchmark_latency.py'] + list(argv))
    out_dir = args.out_dir or osp.join('work_dirs', 'benchmark_latency', time.strftime('%Y%m%d_%H%M%S'))
    try:
        summary, paths = run_benchmark(
            args.configs, args.checkpoint, fuse=args.fuse, device=args.device, threads=args.threads,
            num_images=args.num_images, warmup=args.warmup, images_dir=args.images, mini_root=args.mini,
            target=args.part, breakdown=args.breakdown, cfg_options=args.cfg_options, out_dir=out_dir,
            command=command, twin=args.twin, compile_mode=args.compile,
            compile_shapes=args.compile_shapes, shared_boxes=args.shared_boxes,
            cpu_allocator=args.cpu_allocator)
    except BenchmarkError as e:
        parser.exit(2, f'{parser.prog}: error: {e}\n')
    print()
    print(render_markdown(summary))
    print('wrote ' + ', '.join(paths[k] for k in ('md', 'json', 'png')))
    return summary


if __name__ == '__main__':
    main()
