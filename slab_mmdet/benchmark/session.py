"""One benchmark run from start to end, as tools/benchmark_latency.py does it."""
import contextlib
import tempfile
import time

import torch

from ..utils import is_int
from .allocator import check_cpu_allocator, set_cpu_allocator
from .errors import BenchmarkError
from .images import dataset_signature, resolve_images
from .measure import check_device
from .candidates import check_compile_mode, check_compile_shapes, check_inputs, load_config, load_models
from .report import machine_facts, render_markdown, summarize_result, write_report
from .twin import write_twin_config
from .interleave import TARGETS, benchmark_backbones, benchmark_detectors, resolve_breakdown


def run_benchmark(configs, checkpoints=(), fuse='none', device=None, threads=None, num_images=100, warmup=10,
                  images_dir=None, mini_root=None, target='detector', breakdown='auto', cfg_options=None,
                  out_dir=None, command=None, clock=time.perf_counter, progress=True, log=print, twin=False,
                  compile_mode=None, compile_shapes='automatic', shared_boxes=False, cpu_allocator='reuse'):
    """Validate the inputs, load the models, time them interleaved, and write the report.

    Every argument mirrors an option of tools/benchmark_latency.py; `device` None means CUDA
    when available, else the CPU; `threads` sets ``torch.set_num_threads``. The images are
    `images_dir`, else the mini COCO val split under `mini_root`, else the first config's test
    dataset. All input checks run before any model is built; a bad value raises
    BenchmarkError. ``twin``: time the first config's LayerNorm + softmax twin (derived from it
    by :func:`~slab_mmdet.benchmark.twin.write_twin_config`, written to `out_dir` or a temporary
    folder; random weights, unfused) first, as the reference of every ratio. Returns
    ``(summary, paths)``: the JSON summary and the written files ({'md', 'json', 'png'}; empty
    when `out_dir` is None). ``compile_mode``: every model's backbone and neck through
    ``torch.compile`` in that mode (``COMPILE_MODES``); the warm-up then covers every distinct
    image (each new shape compiles), so that no timed forward compiles; ``compile_shapes``:
    one graph for all sizes or one per size (``COMPILE_SHAPES``). Should torch's limit of
    compiled graphs per function be reached, the run stops rather than time eager code.
    ``shared_boxes``: whole two-stage detectors continue with the first model's boxes (see
    :func:`~.interleave.benchmark_detectors`). ``cpu_allocator``: how the C allocator treats freed
    memory during a CPU run (``CPU_ALLOCATOR_MODES``, :mod:`~.allocator`); 'reuse' keeps it for
    the next forward, so that no model pays page faults for its large tensors at every image.
    """
    log = log or (lambda message: None)
    device = check_device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    for name, value, low in (('num_images', num_images, 1), ('warmup', warmup, 0)):
        if not is_int(value) or value < low:
            raise BenchmarkError(f'{name} must be an integer >= {low}, got {value!r}')
    if threads is not None and (not is_int(threads) or threads < 1):
        raise BenchmarkError(f'threads must be an integer >= 1, got {threads!r}')
    if target not in TARGETS:
        raise BenchmarkError(f'target {target!r} is not valid; valid: {", ".join(TARGETS)}')
    resolve_breakdown(breakdown, device, target)
    if shared_boxes and target != 'detector':
        raise BenchmarkError('shared boxes feed the heads of whole detectors; with target backbone there are none')
    check_compile_mode(compile_mode)
    check_compile_shapes(compile_shapes)
    check_cpu_allocator(cpu_allocator)
    configs = list(configs)
    checkpoints = check_inputs(configs, checkpoints, fuse)
    if twin:
        twin_path = write_twin_config(configs[0], out_dir or tempfile.mkdtemp(prefix='slab_twin_'), cfg_options)
        log(f'[benchmark] twin of {configs[0]}: {twin_path} (softmax attention, LayerNorm; random weights, '
            f'unfused), the reference of the ratios')
    if threads is not None:
        torch.set_num_threads(threads)
    if device == 'cpu' and set_cpu_allocator(cpu_allocator) != cpu_allocator:
        log(f'[benchmark] note: cpu allocator {cpu_allocator!r} is not available here (no glibc mallopt); '
            f'running with the C library\'s default')

    first_cfg = load_config(configs[0], cfg_options)
    images = resolve_images(first_cfg, num_images, images_dir, mini_root, config_name=configs[0])
    if images_dir is None and mini_root is None:
        for config in configs[1:]:
            if dataset_signature(load_config(config, cfg_options)) != dataset_signature(first_cfg):
                log(f'[benchmark] note: {config} has another test dataset than {configs[0]}; every model is '
                    f'timed on the images of {configs[0]}')
    log(f'[benchmark] {len(images.paths)} images per model ({images.num_unique} distinct) from {images.source}')
    if images.num_unique < len(images.paths):
        log(f'[benchmark] note: only {images.num_unique} images available; they are reused in order')

    if compile_mode is not None and warmup < images.num_unique:
        log(f'[benchmark] --compile: warm-up {warmup} -> {images.num_unique} rounds, one per distinct image, so '
            f'that every input shape is compiled before timing')
        warmup = images.num_unique
    twin_models = (load_models([twin_path], device=device, cfg_options=cfg_options, log=log,
                               compile_mode=compile_mode, compile_shapes=compile_shapes) if twin else [])
    models = twin_models + load_models(configs, checkpoints, fuse, device, cfg_options, log=log,
                                       compile_mode=compile_mode, compile_shapes=compile_shapes)
    # Past torch's limit of graphs per compiled function dynamo would run the rest eagerly,
    # and the report would call eager times compiled: room for every distinct image, else stop.
    limits = (torch._dynamo.config.patch(recompile_limit=max(8, images.num_unique + 1),
                                         fail_on_recompile_limit_hit=True)
              if compile_mode is not None else contextlib.nullcontext())
    with limits:
        if target == 'detector':
            result = benchmark_detectors(models, images, warmup, breakdown, clock=clock, progress=progress,
                                         shared_boxes=shared_boxes)
        else:
            result = benchmark_backbones(models, images, warmup, clock=clock, progress=progress)
    summary = summarize_result(result, machine_facts(device, command))
    paths = write_report(summary, out_dir) if out_dir else {}
    return summary, paths


def time_detectors_with_backbones(models, images, warmup, command, out_dir, stem):
    """Whole detectors timed interleaved with each backbone's time in the same pass (no
    memory pass), the report written to ``out_dir/stem.{md,json,png}`` and printed. Returns
    the summary (:func:`~.report.summarize_result`)."""
    result = benchmark_detectors(models, images, warmup=warmup, breakdown='same-pass', memory=False)
    summary = summarize_result(result, machine_facts('cpu', command))
    write_report(summary, out_dir, stem=stem)
    print(render_markdown(summary), flush=True)
    return summary
