"""Benchmark reports: machine facts, statistics from the raw timings, and the Markdown,
JSON and PNG files. The JSON summary is the single source: the table and the chart are
drawn from it."""
import json
import os
import os.path as osp
import platform
from datetime import datetime

import numpy as np
import torch

from .allocator import cpu_allocator_description
from .measure import DETECTOR_PARTS, OTHER_PART, summarize_timings, weights_mib
from .interleave import TIMED_REGIONS

STAT_KEYS = ('n', 'mean', 'median', 'p90', 'p99', 'std', 'min', 'max')


def cpu_model():
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts(device, command=None):
    """Facts that make a latency number reproducible: device, threads, versions, date, command."""
    import mmcv
    import mmdet
    import mmengine
    cuda = str(device).startswith('cuda')
    facts = dict(
        date=datetime.now().astimezone().isoformat(timespec='seconds'),
        command=command,
        device=str(device),
        device_name=torch.cuda.get_device_name(torch.device(device)) if cuda else cpu_model(),
        cpu=cpu_model(),
        cpu_count=os.cpu_count(),
        threads=torch.get_num_threads(),
        omp_num_threads=os.environ.get('OMP_NUM_THREADS'),
        torch=torch.__version__,
        mmdet=mmdet.__version__,
        mmcv=mmcv.__version__,
        mmengine=mmengine.__version__,
        python=platform.python_version(),
        platform=platform.platform(),
    )
    if cuda:
        facts.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                     cudnn_benchmark=torch.backends.cudnn.benchmark)
    else:
        facts.update(cpu_allocator=cpu_allocator_description())
    return facts


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def paired_ratio(times_ms, reference_ms):
    """The per-image ratios ``times_ms[i] / reference_ms[i]`` (both timed in the same round of the
    interleaved run, so machine drift cancels), as their median and 10th-90th percentiles."""
    ratios = [t / r for t, r in zip(times_ms, reference_ms) if r > 0]
    if not ratios:
        return dict(median=None, p10=None, p90=None, n=0)
    p10, median, p90 = np.percentile(ratios, [10, 50, 90])
    return dict(median=float(median), p10=float(p10), p90=float(p90), n=len(ratios))


def summarize_result(result, machine=None):
    """A JSON-ready summary of a BenchmarkResult: settings, per-model statistics, ratios to the
    first model (of the means, of the medians, and the median of the per-image ratios with its
    10-90 % spread), memory, per-part means and all raw per-image values."""
    reference = summarize_timings(result.timings[0].total_ms)
    models = []
    for bench_model, timings in zip(result.models, result.timings):
        stats = summarize_timings(timings.total_ms)
        breakdown = {part: _mean(ms) for part, ms in timings.breakdown_ms.items()} or None
        models.append(dict(
            name=bench_model.name,
            config=bench_model.config,
            checkpoint=bench_model.checkpoint,
            weights='checkpoint' if bench_model.checkpoint else 'random',
            fused=bench_model.fused,
            fuse_info=bench_model.fuse_info,
            compiled=bench_model.compiled,
            first_forward_ms=timings.warmup_ms[0] if timings.warmup_ms else None,
            latency_ms={k: stats[k] for k in STAT_KEYS},
            images_per_s=stats['images_per_s'],
            ratio_to_first=dict(
                mean=stats['mean'] / reference['mean'] if reference['mean'] > 0 else None,
                median=stats['median'] / reference['median'] if reference['median'] > 0 else None,
                paired=paired_ratio(timings.total_ms, result.timings[0].total_ms)),
            memory=dict(
                weights_mib=weights_mib(bench_model.model),
                peak_forward_mib=max(timings.memory_mib) if timings.memory_mib else None,
                device_peak_mib=max(timings.device_peak_mib) if timings.device_peak_mib else None),
            breakdown_ms=breakdown,
            breakdown_pass_mean_ms=_mean(timings.breakdown_pass_ms),
            detections_mean=_mean(timings.detections),
            page_faults_per_image=float(np.median(timings.page_faults)) if timings.page_faults else None,
            raw=dict(
                total_ms=list(timings.total_ms),
                breakdown_ms={p: list(v) for p, v in timings.breakdown_ms.items()},
                breakdown_pass_ms=list(timings.breakdown_pass_ms),
                memory_mib=list(timings.memory_mib),
                device_peak_mib=list(timings.device_peak_mib),
                detections=list(timings.detections),
                page_faults=list(timings.page_faults),
                warmup_ms=list(timings.warmup_ms)),
        ))
    settings = dict(
        target=result.target,
        timed_region=TIMED_REGIONS[result.target],
        not_timed='image loading, test pipeline, collation, data_preprocessor (run before the clock starts)',
        batch_size=1,
        device=result.device,
        num_images=len(result.images.paths),
        unique_images=result.images.num_unique,
        image_source=result.images.source,
        warmup=result.warmup,
        schedule=result.schedule,
        breakdown=result.breakdown,
        memory_method=result.memory_method,
    )
    return dict(machine=machine or machine_facts(result.device), settings=settings,
                images=list(result.images.paths), models=models)


def _fmt(value, digits=2):
    return '–' if value is None else f'{value:.{digits}f}'


def format_paired(paired):
    """'0.812 (0.79-0.83)' for a paired ratio, '–' where there is none (summaries of older runs)."""
    if not paired or paired.get('median') is None:
        return '–'
    return f'{paired["median"]:.3f} ({paired["p10"]:.2f}-{paired["p90"]:.2f})'


def breakdown_columns(summary):
    """Part names present in any model, in DETECTOR_PARTS order, then OTHER_PART."""
    present = {p for m in summary['models'] for p in (m['breakdown_ms'] or {})}
    return [p for p, _ in DETECTOR_PARTS if p in present] + ([OTHER_PART] if OTHER_PART in present else [])


def render_markdown(summary):
    """The report as Markdown: header of machine facts and settings, then the tables."""
    machine, settings, models = summary['machine'], summary['settings'], summary['models']
    random_weights = [m['name'] for m in models if m['weights'] == 'random']
    lines = [
        f'# Batch-1 latency ({settings["target"]})',
        '',
        f'- Date: {machine["date"]}',
        f'- Command: `{machine["command"]}`',
        f'- Device: {machine["device"]} ({machine["device_name"]}); torch threads: {machine["threads"]}'
        f' (OMP_NUM_THREADS={machine["omp_num_threads"]}); {machine["cpu_count"]} logical CPUs',
        f'- Versions: torch {machine["torch"]}, mmdet {machine["mmdet"]}, mmcv {machine["mmcv"]}, '
        f'mmengine {machine["mmengine"]}, Python {machine["python"]}'
        + (f', CUDA {machine["cuda"]}, cuDNN {machine["cudnn"]}' if 'cuda' in machine else ''),
    ]
    if 'cpu_allocator' in machine:
        lines.append(f'- CPU allocator: {machine["cpu_allocator"]}')
    lines += [
        f'- Images: {settings["num_images"]} per model ({settings["unique_images"]} distinct) from '
        f'{settings["image_source"]}; batch 1',
        f'- Order: {settings["schedule"]}',
        f'- Timed: {settings["timed_region"]}, under torch.inference_mode(), between device syncs. '
        f'Not timed: {settings["not_timed"]}.',
        f'- Memory: {settings["memory_method"]}',
    ]
    if random_weights:
        lines.append(f'- Weights: random (no checkpoint) for {", ".join(random_weights)}; fine for latency, but '
                     f'the number of detections (which drives RoI/mask head time) is not that of trained weights.')
    lines += [
        '',
        '| model | mean (ms) | median (ms) | p90 (ms) | p99 (ms) | std (ms) | img/s | paired ratio (p10-p90) '
        '| mean ratio | median ratio | weights (MiB) | peak fwd mem (MiB) | dets/img |',
        '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ]
    for m in models:
        lat, mem = m['latency_ms'], m['memory']
        lines.append('| ' + ' | '.join([
            m['name'], _fmt(lat['mean']), _fmt(lat['median']), _fmt(lat['p90']), _fmt(lat['p99']), _fmt(lat['std']),
            _fmt(m['images_per_s']), format_paired(m['ratio_to_first'].get('paired')),
            _fmt(m['ratio_to_first']['mean'], 3), _fmt(m['ratio_to_first']['median'], 3),
            _fmt(mem['weights_mib'], 1), _fmt(mem['peak_forward_mib'], 1), _fmt(m['detections_mean'], 1)]) + ' |')
    lines.append('')
    lines.append(f'Ratios are to the first model ({models[0]["name"]}); below 1 is faster. The paired ratio is '
                 f'the median of the per-image ratios (each image timed for every model in one round), with '
                 f'their 10th-90th percentiles.')
    faults = [(m['name'], m.get('page_faults_per_image')) for m in models]
    if all(f is not None for _, f in faults):
        lines += ['', 'Minor page faults per timed forward (median over the images; see the CPU allocator line): '
                  + ', '.join(f'{name} {f:,.0f}' for name, f in faults) + '.']
    columns = breakdown_columns(summary)
    if columns:
        how = ('in the timed pass (on the CPU the part wrappers cost only clock reads)'
               if settings['breakdown'] == 'same-pass' else
               'in an extra interleaved pass with a device sync around every part, so the timed totals above '
               'stay free of those syncs')
        lines += ['', '## Per-part breakdown (mean ms)', '',
                  f'Measured {how}. "other" is that pass\'s total minus the parts.', '',
                  '| model | ' + ' | '.join(columns) + ' | pass total |',
                  '|---|' + '---:|' * (len(columns) + 1)]
        for m in models:
            parts = m['breakdown_ms'] or {}
            lines.append(f'| {m["name"]} | ' + ' | '.join(_fmt(parts.get(c)) for c in columns)
                         + f' | {_fmt(m["breakdown_pass_mean_ms"])} |')
    fused = [m for m in models if m['fused']]
    if fused:
        lines += ['', '## Fusion', '', '| model | removed norms |', '|---|---:|']
        lines += [f'| {m["name"]} | {m["fuse_info"]["removed_norms"]} |' for m in fused]
    compiled = [m for m in models if m.get('compiled')]
    if compiled:
        lines += ['', '## torch.compile', '',
                  'Backbone and neck compiled (inductor); heads eager. The first warm-up forward includes the '
                  'compilation; every distinct image shape was seen in the warm-up, so no timed forward compiles.',
                  '', '| model | mode | first forward (s) | timed mean (ms) |', '|---|---|---:|---:|']
        lines += [f'| {m["name"]} | {m["compiled"]} | {_fmt(m["first_forward_ms"] / 1e3, 1)} | '
                  f'{_fmt(m["latency_ms"]["mean"])} |' for m in compiled]
    return '\n'.join(lines) + '\n'


def plot_summary(summary, path):
    """PNG chart: mean and median bars with whiskers up to p90, and stacked per-part bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    models = summary['models']
    names = [m['name'] for m in models]
    columns = breakdown_columns(summary)
    fig = Figure(figsize=(6 + 4 * bool(columns) + 0.6 * len(models), 4.8), layout='constrained')
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if columns else 1, squeeze=False)[0]
    x = np.arange(len(models))
    mean = np.array([m['latency_ms']['mean'] for m in models])
    median = np.array([m['latency_ms']['median'] for m in models])
    p90 = np.array([m['latency_ms']['p90'] for m in models])
    ax = axes[0]
    ax.bar(x - 0.2, mean, 0.4, label='mean')
    ax.bar(x + 0.2, median, 0.4, label='median',
           yerr=[np.zeros_like(median), np.maximum(p90 - median, 0)], capsize=4, error_kw=dict(label='p90'))
    ax.set_xticks(x, names, rotation=20, ha='right')
    ax.set_ylabel('ms per image (batch 1)')
    ax.set_title(f'{summary["settings"]["target"]} latency (whisker: median to p90)')
    ax.legend()
    if columns:
        ax = axes[1]
        bottom = np.zeros(len(models))
        for part in columns:
            values = np.array([(m['breakdown_ms'] or {}).get(part) or 0.0 for m in models])
            ax.bar(x, values, 0.6, bottom=bottom, label=part)
            bottom += values
        ax.set_xticks(x, names, rotation=20, ha='right')
        ax.set_ylabel('mean ms per image')
        ax.set_title(f'per-part breakdown ({summary["settings"]["breakdown"]})')
        ax.legend(fontsize='small', loc='upper left', bbox_to_anchor=(1.0, 1.0))
    fig.savefig(path, dpi=100)


def write_report(summary, out_dir, stem='latency'):
    """Write ``<stem>.md``, ``<stem>.json`` and ``<stem>.png`` to `out_dir`; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {ext: osp.join(out_dir, f'{stem}.{ext}') for ext in ('md', 'json', 'png')}
    with open(paths['md'], 'w') as f:
        f.write(render_markdown(summary))
    with open(paths['json'], 'w') as f:
        json.dump(summary, f, indent=1, default=str)
    plot_summary(summary, paths['png'])
    return paths
