"""Summarise the anneal study's runs (``run_study.py``) as a markdown table and plots.

Reads every ``<out>/<variant>_s<seed>/`` run directory (not only summary.jsonl, so runs
of several invocations are all counted), and writes ``<docs>/anneal_study.md`` (one row
per variant: runs, diverged runs and where, final loss, bbox mAP) and PNGs of the loss
and the last stage's residual-stream RMS against g.

    python benchmarks/anneal_study/report_study.py --out work_dirs/anneal_study --docs docs/anneal_study
"""
import argparse
import glob
import json
import math
import os
import os.path as osp
import re
import statistics

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from run_study import VARIANTS, training_scalars  # noqa: E402


def load_runs(out):
    runs = []
    for work_dir in sorted(glob.glob(osp.join(out, '*_s*'))):
        m = re.fullmatch(r'(.+)_s(\d+)', osp.basename(work_dir))
        if not m or m[1] not in VARIANTS or not osp.exists(osp.join(work_dir, 'stdout.txt')):
            continue
        rows = training_scalars(work_dir)
        train = [r for r in rows if 'loss' in r]
        with open(osp.join(work_dir, 'stdout.txt')) as f:
            log = f.read()
        done = 'ANNEAL DIVERGED' in log or any('coco/bbox_mAP' in r for r in rows)
        if not train or not done:
            continue   # still running or failed for another reason
        diverged = 'ANNEAL DIVERGED' in log or any(not math.isfinite(r['loss']) for r in train)
        tail = [r['loss'] for r in train[-5:]]
        runs.append(dict(variant=m[1], seed=int(m[2]), rows=train, diverged=diverged,
                         diverge_g=train[-1].get('prepbn_g', 0.0) if diverged else None,
                         final_loss=None if diverged else sum(tail) / len(tail),
                         bbox_map=next((r['coco/bbox_mAP'] for r in rows if 'coco/bbox_mAP' in r), None)))
    return runs


def fmt_mean(values, digits=3):
    values = [v for v in values if v is not None]
    if not values:
        return '-'
    if len(values) == 1:
        return f'{values[0]:.{digits}f}'
    return f'{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}'


def table(runs):
    lines = ['| variant | change (cfg-options) | runs | diverged | g at divergence | final loss | bbox mAP |',
             '| --- | --- | --- | --- | --- | --- | --- |']
    for variant in VARIANTS:
        rs = [r for r in runs if r['variant'] == variant]
        if not rs:
            continue
        div = [r for r in rs if r['diverged']]
        lines.append(f"| {variant} | {' '.join(VARIANTS[variant]) or '(batch 1)'} | {len(rs)} (seeds "
                     f"{', '.join(str(r['seed']) for r in sorted(rs, key=lambda r: r['seed']))}) | {len(div)} | "
                     f"{', '.join('%.2f' % r['diverge_g'] for r in div) or '-'} | "
                     f"{fmt_mean([r['final_loss'] for r in rs], 2)} | {fmt_mean([r['bbox_map'] for r in rs])} |")
    return '\n'.join(lines)


def plot(runs, key, ylabel, path, log=True):
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in sorted(runs, key=lambda r: (r['variant'], r['seed'])):
        if r['variant'].startswith('ft_'):
            continue   # fine-tuning at g = 0: nothing to plot against g
        pts = [(row.get('prepbn_g', 0.0), row[key]) for row in r['rows'] if key in row and math.isfinite(row[key])]
        if pts:
            ax.plot(*zip(*pts), label=f"{r['variant']} s{r['seed']}" + (' (diverged)' if r['diverged'] else ''),
                    lw=1.2, ls='--' if r['diverged'] else '-')
    ax.set(xlabel='PRepBN g (1 = LayerNorm, 0 = RepBN)', ylabel=ylabel, xlim=(1.02, -0.02))
    if log:
        ax.set_yscale('log')
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    here = osp.dirname(osp.abspath(__file__))
    root = osp.dirname(osp.dirname(here))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default=osp.join(root, 'work_dirs', 'anneal_study'))
    parser.add_argument('--docs', default=osp.join(root, 'docs', 'anneal_study'))
    args = parser.parse_args(argv)
    runs = load_runs(args.out)
    os.makedirs(args.docs, exist_ok=True)
    with open(osp.join(args.docs, 'anneal_study.md'), 'w') as f:
        f.write(table(runs) + '\n')
    plot(runs, 'loss', 'training loss', osp.join(args.docs, 'loss_vs_g.png'))
    plot(runs, 'rms_stage3', 'RMS of the last stage residual stream', osp.join(args.docs, 'rms_stage3_vs_g.png'))
    plot(runs, 'rms_out3', 'RMS of output norm 3 (what the FPN reads)', osp.join(args.docs, 'rms_out3_vs_g.png'))
    print(table(runs))
    print(json.dumps({r['variant'] + f"_s{r['seed']}": dict(diverged=r['diverged'], bbox_map=r['bbox_map'])
                      for r in runs}))


if __name__ == '__main__':
    main()
