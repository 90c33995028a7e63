"""The table and plot of the mini-scale detection study from whatever result files exist
(``run.py`` writes them): per row bbox/segm mAP mean +- sd over its seeds, the largest loss,
diverged runs, the missing seeds, and, from each run of latency.py found, the trained
detector's fused latency against its trained LayerNorm twin at COCO test resolution (backbone
and Mask R-CNN).

    python benchmarks/table3_mini/report.py --out docs/table3_mini

Writes ``<out>/table3_mini.md`` and ``<out>/map_vs_latency.png`` and prints the table.
"""
import argparse
import glob
import importlib.util
import json
import os
import os.path as osp
import statistics


def _load_runner():
    """This folder's run.py (loaded by path: 'run' is too common a module name to put on sys.path)."""
    spec = importlib.util.spec_from_file_location('table3_mini_run', osp.join(osp.dirname(osp.abspath(__file__)),
                                                                               'run.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_runner = _load_runner()
RESULTS, ROOT, ROWS, SEEDS = _runner.RESULTS, _runner.ROOT, _runner.ROWS, _runner.SEEDS

def load_results(results):
    """{row: [result dicts]} of every result file of a known row, in seed order."""
    found = {}
    for path in sorted(glob.glob(osp.join(results, '*_s*.json'))):
        with open(path) as f:
            result = json.load(f)
        if result.get('row') in ROWS:
            found.setdefault(result['row'], []).append(result)
    return {row: sorted(runs, key=lambda r: r['seed']) for row, runs in found.items()}


def mean_sd(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def load_latency(folder):
    """The runs of latency.py found in `folder` (``run<N>.json``), in run order."""
    numbered = {}
    for path in glob.glob(osp.join(folder, 'run*.json')):
        number = osp.basename(path)[len('run'):-len('.json')]
        if number.isdigit():
            numbered[int(number)] = path
    runs = []
    for number in sorted(numbered):
        with open(numbered[number]) as f:
            runs.append(json.load(f))
    return runs


def latency_ratios(latency_runs, row):
    """([backbone paired ratio to the twin per run], [the whole detector's per run]), runs that
    did not time `row` left out."""
    timed = [run['rows'][row] for run in latency_runs if row in run.get('rows', {})]
    return [t['backbone']['median'] for t in timed], [t['detector']['median'] for t in timed]


def summarise(results, latency_runs=(), seeds=SEEDS):
    """One dict per row of ROWS, in order, with its statistics (None where nothing ran)."""
    table = []
    for row, (_, what) in ROWS.items():
        runs = results.get(row, [])
        finished = [r for r in runs if not r['diverged']]
        bbox, segm = mean_sd([r['bbox_mAP'] for r in finished]), mean_sd([r['segm_mAP'] for r in finished])
        backbone, detector = latency_ratios(latency_runs, row)
        table.append(dict(
            row=row, what=what, runs=len(runs), seeds=[r['seed'] for r in runs],
            missing=[s for s in seeds if s not in {r['seed'] for r in runs}],
            bbox_mean=bbox[0], bbox_sd=bbox[1], segm_mean=segm[0], segm_sd=segm[1],
            max_loss=max((r['max_loss'] for r in runs if r['max_loss'] is not None), default=None),
            diverged=[(r['seed'], r['diverged_at_g'], r['diverged_at_iter']) for r in runs if r['diverged']],
            backbone_ratios=backbone, detector_ratios=detector,
            minutes=mean_sd([r['seconds'] / 60 for r in runs])[0]))
    return table


def _pm(mean, sd):
    if mean is None:
        return '–'
    return f'{mean:.3f}' + (f' ± {sd:.3f}' if sd is not None else '')


def _num(value, fmt='{:.2f}'):
    return '–' if value is None else fmt.format(value)


def _runs(values):
    """'0.72 / 0.74' (one value per latency run), '–' where none."""
    return ' / '.join(f'{v:.2f}' for v in values) or '–'


def render_table(table):
    lines = ['| row | model | runs | bbox mAP | segm mAP | largest loss | diverged (seed, g, iter) | '
             'backbone vs twin | Mask R-CNN vs twin | min/run | missing seeds |',
             '|---|---|---:|---:|---:|---:|---|---:|---:|---:|---|']
    for t in table:
        diverged = ', '.join(f'({s}, {_num(g, "{:.3g}")}, {_num(i, "{}")})' for s, g, i in t['diverged']) or 'none'
        lines.append(f"| {t['row']} | {t['what']} | {t['runs']} | {_pm(t['bbox_mean'], t['bbox_sd'])} | "
                     f"{_pm(t['segm_mean'], t['segm_sd'])} | {_num(t['max_loss'])} | "
                     f"{diverged if t['runs'] else '–'} | {_runs(t['backbone_ratios'])} | "
                     f"{_runs(t['detector_ratios'])} | {_num(t['minutes'], '{:.1f}')} | "
                     f"{', '.join(map(str, t['missing'])) or '–'} |")
    return '\n'.join(lines)


def plot(table, path):
    """bbox mAP (mean, sd bars) against the whole detector's latency relative to its twin (the
    mean of the latency runs), as the paper's Figure 5 plots AP against latency; rows without
    both are left out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6.4, 4.4), layout='constrained')
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    shown = [t for t in table if t['bbox_mean'] is not None and t['detector_ratios']]
    for t in shown:
        ax.errorbar(statistics.fmean(t['detector_ratios']), t['bbox_mean'], yerr=t['bbox_sd'] or 0, fmt='o', capsize=4,
                    label=t['what'])
    ax.set_xlabel('Mask R-CNN latency / its LayerNorm twin (trained, fused, CPU, batch 1, COCO test size)')
    ax.set_ylabel('bbox mAP, mini COCO val (mean ± sd over seeds)')
    left_out = [t['row'] for t in table if t not in shown]
    ax.set_title('mini-scale Table 3' + (f' ({len(left_out)} rows without both numbers)' if left_out else ''),
                 fontsize='medium')
    if shown:
        ax.legend(fontsize='small')
    fig.savefig(path, dpi=100)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--results', default=RESULTS, help='result files (default: %(default)s)')
    parser.add_argument('--latency', default=None,
                        help="latency.py's runs (default: <results>/latency; none found: no latency columns)")
    parser.add_argument('--out', default=osp.join(ROOT, 'docs', 'table3_mini'), help='default: %(default)s')
    args = parser.parse_args(argv)
    if not osp.isdir(args.results):
        parser.error(f'results folder not found: {args.results} (run benchmarks/table3_mini/run.py first)')
    latency = args.latency or osp.join(args.results, 'latency')
    if args.latency and not osp.isdir(args.latency):
        parser.error(f'--latency: no such folder: {args.latency}')
    table = summarise(load_results(args.results), load_latency(latency))
    os.makedirs(args.out, exist_ok=True)
    text = render_table(table)
    with open(osp.join(args.out, 'table3_mini.md'), 'w') as f:
        f.write('# Mini-scale Table 3 (generated by benchmarks/table3_mini/report.py)\n\n' + text + '\n')
    plot(table, osp.join(args.out, 'map_vs_latency.png'))
    print(text)
    return table


if __name__ == '__main__':
    main()
