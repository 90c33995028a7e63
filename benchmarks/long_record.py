"""The backbone twin record spread over half an hour or more (issue #38): do two runs agree on the
memory-bound peers once each run samples the shared host's states over time?

A run is SEGMENTS short runs of benchmarks/latency_record.py one after another, each a fresh
process with 1 warm-up round and IMAGES images of the mini COCO val split (the next slice of
the sorted folder in each segment, wrapping round), every comparison in every segment, so
that each comparison's rounds spread over the whole run instead of sitting in one ten-minute
window (10 segments of 10 give each of the 50 images twice). Each segment writes
<run>/seg_NNN/ (its reports, and segment.json with its clock times and images) and a re-run
skips the segments already written: a cut run resumes. A model's ratio for the run is the
median of its per-image ratios to the twin pooled over the run's segments (p10-p90 beside
it); `report` puts two runs side by side and plots each segment's median ratio against the
clock.

    python benchmarks/long_record.py run benchmarks/results/long_record/run1 --segments 10
    python benchmarks/long_record.py run benchmarks/results/long_record/run2 --segments 10
    python benchmarks/long_record.py report benchmarks/results/long_record/run1 \
        benchmarks/results/long_record/run2 --out benchmarks/results/long_record
"""
import argparse
import datetime
import glob
import json
import os
import os.path as osp
import subprocess
import sys
import tempfile

from bootstrap import REPO, command_line

COMPARISONS = ('pvt_t_twin_backbone', 'pvt_s_twin_backbone', 'swin_t_twin_backbone')
IMAGES_DIR = osp.join(REPO, 'data', 'mini_coco', 'val')


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


def segment_images(index, per_segment):
    """The images of segment `index`: the next `per_segment` of the sorted folder, wrapping round."""
    from slab_mmdet.benchmark.images import list_image_dir
    paths = list_image_dir(IMAGES_DIR)
    if per_segment > len(paths):
        raise SystemExit(f'--images {per_segment}: the folder {IMAGES_DIR} holds {len(paths)} images')
    return [paths[(index * per_segment + i) % len(paths)] for i in range(per_segment)]


def run_segment(seg_dir, images, threads):
    """One latency_record.py process over `images` (linked into a scratch folder), reports in `seg_dir`."""
    started = now()
    with tempfile.TemporaryDirectory() as folder:
        for path in images:
            os.symlink(path, osp.join(folder, osp.basename(path)))
        cmd = [sys.executable, osp.join(REPO, 'benchmarks', 'latency_record.py'), '--threads', str(threads),
               '--num-images', str(len(images)), '--warmup', '1', '--no-memory', '--images', folder,
               '--out-dir', seg_dir, '--only', *COMPARISONS]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    for generated in glob.glob(osp.join(seg_dir, '*.py')) + glob.glob(osp.join(seg_dir, '*.png')):
        os.remove(generated)   # the generated peer configs and per-segment plots: not part of the record
    with open(osp.join(seg_dir, 'segment.json'), 'w') as f:   # written last: marks the segment finished
        json.dump(dict(started=started, ended=now(), images=[osp.basename(p) for p in images]), f, indent=1)


def run(args):
    os.makedirs(args.run_dir, exist_ok=True)
    for index in range(args.segments):
        seg_dir = osp.join(args.run_dir, f'seg_{index:03d}')
        if osp.exists(osp.join(seg_dir, 'segment.json')):
            print(f'segment {index + 1}/{args.segments}: done before, skipped', flush=True)
            continue
        print(f'segment {index + 1}/{args.segments}: started {now()}', flush=True)
        run_segment(seg_dir, segment_images(index, args.images), args.threads)
    with open(osp.join(args.run_dir, 'command.txt'), 'w') as f:
        f.write(command_line(__file__) + '\n')


def load_run(run_dir):
    """[(segment mid-time, {comparison: {model: (its per-image ms, the comparison's first model's)}})]."""
    segments = []
    for seg_dir in sorted(glob.glob(osp.join(run_dir, 'seg_*'))):
        marker = osp.join(seg_dir, 'segment.json')
        if not osp.exists(marker):
            continue   # cut before it finished
        with open(marker) as f:
            seg = json.load(f)
        start, end = (datetime.datetime.fromisoformat(seg[k]) for k in ('started', 'ended'))
        times = {}
        for name in COMPARISONS:
            with open(osp.join(seg_dir, f'{name}.json')) as f:
                models = json.load(f)['models']
            first = models[0]['raw']['total_ms']
            times[name] = {m['name']: (m['raw']['total_ms'], first) for m in models[1:]}
        segments.append((start + (end - start) / 2, times))
    if not segments:
        raise SystemExit(f'{run_dir}: no finished segment (seg_*/segment.json)')
    return segments


def pooled(segments):
    """{(comparison, model): paired ratio (median, p10, p90, n)} over every image of every segment."""
    from slab_mmdet.benchmark.report import paired_ratio
    pairs = {}
    for _, times in segments:
        for name, models in times.items():
            for model, (ms, reference) in models.items():
                both = pairs.setdefault((name, model), ([], []))
                both[0].extend(ms)
                both[1].extend(reference)
    return {k: paired_ratio(*both) for k, both in pairs.items()}


def segment_medians(segments, name, model):
    """Each segment's median per-image ratio of `model` in comparison `name`."""
    from slab_mmdet.benchmark.report import paired_ratio
    return [paired_ratio(*times[name][model])['median'] for _, times in segments]


def report(args):
    from slab_mmdet.benchmark.report import format_paired
    runs = [load_run(d) for d in args.runs]
    pools = [pooled(s) for s in runs]
    spans = [f'{s[0][0]:%H:%M}-{s[-1][0]:%H:%M} UTC mid-segment, {len(s)} segments, '
             f'{max(p["n"] for p in pool.values())} images' for s, pool in zip(runs, pools)]
    lines = [f'Run 1: {spans[0]}; run 2: {spans[1]}. Pooled median of per-image ratios to the twin (p10-p90).',
             '', '| comparison | model | run 1 | run 2 | difference | spread of segment medians, run 1 / run 2 |',
             '|---|---|---:|---:|---:|---:|']
    worst = 0.0
    for key in pools[0]:
        cells, spreads = [], []
        for pool, segments in zip(pools, runs):
            cells.append(format_paired(pool[key]))
            medians = segment_medians(segments, *key)
            spreads.append(f'{min(medians):.3f}-{max(medians):.3f}')
        diff = abs(pools[0][key]['median'] - pools[1][key]['median'])
        worst = max(worst, diff)
        lines.append(f'| {key[0]} | {key[1]} | {cells[0]} | {cells[1]} | {diff:.3f} | {" / ".join(spreads)} |')
    lines += ['', f'Largest difference between the runs: {worst:.3f}.']
    for i, segments in enumerate(runs, 1):   # what a run of half the length would have said
        half = len(segments) // 2
        first, second = pooled(segments[:half]), pooled(segments[half:])
        diffs = sorted(((abs(first[k]['median'] - second[k]['median']), k[1]) for k in first), reverse=True)
        lines.append(f'Run {i}, its first {half} segments against the rest: largest difference '
                     f'{diffs[0][0]:.3f} ({diffs[0][1]}), SLAB models at most '
                     f'{max(d for d, m in diffs if "slab" in m):.3f}.')
    table = '\n'.join(lines) + '\n'
    os.makedirs(args.out, exist_ok=True)
    with open(osp.join(args.out, 'long_record.md'), 'w') as f:
        f.write(table)
    print(table)
    plot(runs, osp.join(args.out, 'long_record.png'))


def plot(runs, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(COMPARISONS), figsize=(6 * len(COMPARISONS), 4.5), sharex=True)
    for ax, name in zip(axes, COMPARISONS):
        for run_index, segments in enumerate(runs):
            for i, model in enumerate(segments[0][1][name]):
                ax.plot([t for t, _ in segments], segment_medians(segments, name, model),
                        marker='o' if run_index == 0 else 's', color=f'C{i}', label=model if run_index == 0 else None)
        ax.set_title(f'{name}: segment medians / twin')
        ax.set_xlabel('time (UTC)')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.tick_params(axis='x', labelrotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('run', help='run (or resume) one long run')
    p.add_argument('run_dir')
    p.add_argument('--segments', type=int, default=10)
    p.add_argument('--images', type=int, default=10, help='images per segment')
    p.add_argument('--threads', type=int, default=2)
    p = sub.add_parser('report', help='two runs side by side, and the plot')
    p.add_argument('runs', nargs=2)
    p.add_argument('--out', required=True)
    args = parser.parse_args(argv)
    if args.command == 'run':
        for flag in ('segments', 'images', 'threads'):
            if getattr(args, flag) < 1:
                parser.error(f'--{flag} {getattr(args, flag)}: must be at least 1')
        run(args)
    else:
        report(args)


if __name__ == '__main__':
    main()
