"""The table and plot of the mini-scale detection study from whatever result files exist
(``run.py`` writes them): per row bbox/segm mAP mean +- sd over its seeds, the largest loss,
diverged runs, the missing seeds, and, where the latency record measured the row's model, its
fused latency against its LayerNorm twin at COCO test resolution (backbone and Mask R-CNN).

    python benchmarks/table3_mini/report.py --record work_dirs/record_run1/record.json \\
        --out docs/table3_mini

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

# row -> (record comparison of the backbone, of the whole detector, the model's name there):
# the latency record (benchmarks/latency_record.py) times COCO-size models with random weights.
LATENCY = {
    'pvt_t_twin': ('pvt_t_twin_backbone', 'pvt_t_twin_mask_rcnn', 'mask_rcnn_pvt_t_twin'),
    'slab_pvt_t': ('pvt_t_twin_backbone', 'pvt_t_twin_mask_rcnn', 'mask_rcnn_slab_pvt_t (fused)'),
    'swin_t_twin': ('swin_t_twin_backbone', 'swin_t_twin_mask_rcnn', 'mask_rcnn_swin_t_twin'),
    'slab_swin_t': ('swin_t_twin_backbone', 'swin_t_twin_mask_rcnn', 'mask_rcnn_slab_swin_t (fused)'),
    'slab_pvt_t_dyt': ('pvt_t_dyt_backbone', 'pvt_t_dyt_mask_rcnn', 'mask_rcnn_slab_pvt_t (DyT) (fused)'),
}


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


def latency_ratios(record, row):
    """(backbone, detector) paired ratio to the twin from the record, or None where not measured."""
    if record is None or row not in LATENCY:
        return None, None
    out = []
    for comparison in LATENCY[row][:2]:
        rows = record['comparisons'].get(comparison, [])
        match = [r for r in rows if r['model'] == LATENCY[row][2]]
        out.append(match[0]['median'] if match else None)
    return tuple(out)


def summarise(results, record=None, seeds=SEEDS):
    """One dict per row of ROWS, in order, with its statistics (None where nothing ran)."""
    table = []
    for row, (_, what) in ROWS.items():
        runs = results.get(row, [])
        finished = [r for r in runs if not r['diverged']]
        bbox, segm = mean_sd([r['bbox_mAP'] for r in finished]), mean_sd([r['segm_mAP'] for r in finished])
        backbone, detector = latency_ratios(record, row)
        table.append(dict(
            row=row, what=what, runs=len(runs), seeds=[r['seed'] for r in runs],
            missing=[s for s in seeds if s not in {r['seed'] for r in runs}],
            bbox_mean=bbox[0], bbox_sd=bbox[1], segm_mean=segm[0], segm_sd=segm[1],
            max_loss=max((r['max_loss'] for r in runs if r['max_loss'] is not None), default=None),
            diverged=[(r['seed'], r['diverged_at_g'], r['diverged_at_iter']) for r in runs if r['diverged']],
            backbone_ratio=backbone, detector_ratio=detector,
            minutes=mean_sd([r['seconds'] / 60 for r in runs])[0]))
    return table


def _pm(mean, sd):
    if mean is None:
        return '–'
    return f'{mean:.3f}' + (f' ± {sd:.3f}' if sd is not None else '')


def _num(value, fmt='{:.2f}'):
    return '–' if value is None else fmt.format(value)


def render_table(table):
    lines = ['| row | model | runs | bbox mAP | segm mAP | largest loss | diverged (seed, g, iter) | '
             'backbone vs twin | Mask R-CNN vs twin | min/run | missing seeds |',
             '|---|---|---:|---:|---:|---:|---|---:|---:|---:|---|']
    for t in table:
        diverged = ', '.join(f'({s}, {_num(g, "{:.3g}")}, {_num(i, "{}")})' for s, g, i in t['diverged']) or 'none'
        lines.append(f"| {t['row']} | {t['what']} | {t['runs']} | {_pm(t['bbox_mean'], t['bbox_sd'])} | "
                     f"{_pm(t['segm_mean'], t['segm_sd'])} | {_num(t['max_loss'])} | "
                     f"{diverged if t['runs'] else '–'} | {_num(t['backbone_ratio'])} | "
                     f"{_num(t['detector_ratio'])} | {_num(t['minutes'], '{:.1f}')} | "
                     f"{', '.join(map(str, t['missing'])) or '–'} |")
    return '\n'.join(lines)


def plot(table, path):
    """bbox mAP (mean, sd bars) against the backbone's latency relative to its twin, as the
    paper's Figure 5 plots AP against latency (the backbone's: the whole detector's ratio with
    random weights did not converge, docs/benchmarks.md); rows without both are left out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6.4, 4.4), layout='constrained')
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    shown = [t for t in table if t['bbox_mean'] is not None and t['backbone_ratio'] is not None]
    for t in shown:
        ax.errorbar(t['backbone_ratio'], t['bbox_mean'], yerr=t['bbox_sd'] or 0, fmt='o', capsize=4,
                    label=t['what'])
    ax.set_xlabel('backbone latency / its LayerNorm twin (fused, CPU, batch 1, 800x1333 class)')
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
    parser.add_argument('--record', default=None, help="the latency record's record.json (optional)")
    parser.add_argument('--out', default=osp.join(ROOT, 'docs', 'table3_mini'), help='default: %(default)s')
    args = parser.parse_args(argv)
    if not osp.isdir(args.results):
        parser.error(f'results folder not found: {args.results} (run benchmarks/table3_mini/run.py first)')
    record = None
    if args.record:
        if not osp.isfile(args.record):
            parser.error(f'--record: no such file: {args.record}')
        with open(args.record) as f:
            record = json.load(f)
    table = summarise(load_results(args.results), record)
    os.makedirs(args.out, exist_ok=True)
    text = render_table(table)
    with open(osp.join(args.out, 'table3_mini.md'), 'w') as f:
        f.write('# Mini-scale Table 3 (generated by benchmarks/table3_mini/report.py)\n\n' + text + '\n')
    plot(table, osp.join(args.out, 'map_vs_latency.png'))
    print(text)
    return table


if __name__ == '__main__':
    main()
