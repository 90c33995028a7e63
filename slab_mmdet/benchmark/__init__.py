"""Batch-1 latency benchmarking of mmdet detectors and their backbones.

Several configs (and fused variants) are measured in one run, interleaved image by image,
with preprocessing outside the timed region; see docs/benchmark_tool.md and
tools/benchmark_latency.py. Typical use::

    summary, paths = run_benchmark(['configs/a.py', 'configs/b.py'], device='cuda', out_dir='work_dirs/latency')

or, step by step::

    images = resolve_images(load_config('configs/a.py'), num_images=100)
    models = load_models(['configs/a.py', 'configs/b.py'], device='cuda')
    summary = summarize_result(benchmark_detectors(models, images, warmup=10))
    write_report(summary, 'work_dirs/latency')
"""
from .allocator import CPU_ALLOCATOR_MODES, cpu_allocator, set_cpu_allocator
from .errors import BenchmarkError, FusionRefused
from .images import DEFAULT_MINI_ROOT, IMAGE_EXTENSIONS, ImageSet, dataset_signature, resolve_images, select_images
from .measure import (DETECTOR_PARTS, OTHER_PART, PartTimer, check_device, find_parts, memory_probe,
                      summarize_timings, weights_mib)
from ..apis import inference_pipeline
from .candidates import (COCO_TEST_SCALE, COMPILE_MODES, COMPILE_SHAPES, FIXED_DETECTIONS, FUSE_MODES, FUSED_SUFFIX,
                         BenchModel, check_inputs, coco_test_options, compile_parts, load_config, load_models,
                         resized_test_pipeline_options)
from .report import machine_facts, plot_summary, render_markdown, summarize_result, write_report
from .session import run_benchmark, time_detectors_with_backbones
from .interleave import (BREAKDOWN_MODES, TARGETS, BenchmarkResult, ModelTimings, benchmark_backbones,
                     benchmark_detectors, resolve_breakdown)

__all__ = [
    'BREAKDOWN_MODES', 'BenchModel', 'BenchmarkError', 'BenchmarkResult', 'COCO_TEST_SCALE', 'COMPILE_MODES',
    'COMPILE_SHAPES', 'CPU_ALLOCATOR_MODES', 'DEFAULT_MINI_ROOT', 'DETECTOR_PARTS', 'FIXED_DETECTIONS',
    'FUSED_SUFFIX', 'FUSE_MODES', 'FusionRefused', 'IMAGE_EXTENSIONS', 'ImageSet', 'ModelTimings', 'OTHER_PART',
    'PartTimer', 'TARGETS', 'benchmark_backbones', 'benchmark_detectors', 'check_device', 'check_inputs',
    'coco_test_options', 'compile_parts', 'cpu_allocator', 'dataset_signature', 'find_parts', 'inference_pipeline',
    'load_config', 'load_models', 'machine_facts', 'memory_probe', 'plot_summary', 'render_markdown',
    'resized_test_pipeline_options', 'resolve_breakdown', 'resolve_images', 'run_benchmark', 'select_images',
    'set_cpu_allocator', 'summarize_result', 'summarize_timings', 'time_detectors_with_backbones', 'weights_mib',
    'write_report',
]
