"""The paper's detection table at mini scale (issue #41): each row's Mask R-CNN trained with one
recipe, the demo's (mini COCO, 2 images per batch, 500 iterations, from scratch), several seeds,
one result file per finished run, so that the study survives being interrupted.

Each run is ``tools/train.py ROW_CONFIG --cfg-options randomness.seed=S`` in its own process;
when it ends, ``<results>/<row>_s<seed>.json`` holds bbox/segm mAP, the largest loss, whether
and at which g training diverged, the wall time, the host CPU and the commit. A run whose file
exists is skipped, so re-running the same command continues the study. ``--budget-min N``
starts no run after N minutes (a run takes 9-20 minutes on 2 cores: leave that much before any
deadline). ``--jobs 2`` runs two at once, one thread each; ``--jobs 1`` runs one with two
threads. On 2 cores --jobs 2 finishes the study about twice as fast: measured 2026-12-05, two
runs at one thread each took 0.90-1.0 s per iteration, one run alone at two threads 0.98 s.

    python benchmarks/table3_mini/run.py --list
    python benchmarks/table3_mini/run.py --rows slab_pvt_t pvt_t_twin --seeds 0 1 2 --budget-min 100
    python benchmarks/table3_mini/report.py      # the table and plot of what exists

Commit ``benchmarks/results/table3_mini/`` after every few runs.
"""
import argparse
import math
import os
import os.path as osp
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(osp.dirname(HERE))
RESULTS = osp.join(ROOT, 'benchmarks', 'results', 'table3_mini')
WORK = osp.join(ROOT, 'work_dirs', 'table3_mini')
sys.path.insert(0, ROOT)
from slab_mmdet.apis import write_json  # noqa: E402 (after the checkout is importable)
from slab_mmdet.benchmark.report import cpu_model  # noqa: E402
from slab_mmdet.engine.training_log import training_scalars  # noqa: E402
MINI = osp.join(ROOT, 'configs', 'mini')
# row -> (its config, what it is). The first three rows of a family are the paper's (twin,
# PRepBN alone, SLAB); the slab_pvt_t_* rows change only SLAB-PVT-T's norm.
ROWS = {
    'pvt_t_twin': (osp.join(MINI, 'mask_rcnn_pvt_t_twin.py'), 'PVT-T twin (LayerNorm, softmax)'),
    'pvt_t_prepbn': (osp.join(MINI, 'mask_rcnn_pvt_t_prepbn.py'), 'PVT-T-PRepBN (softmax)'),
    'slab_pvt_t': (osp.join(MINI, 'mask_rcnn_slab_pvt_t.py'), 'SLAB-PVT-T (SLA, PRepBN)'),
    'swin_t_twin': (osp.join(MINI, 'mask_rcnn_swin_t_twin.py'), 'Swin-T twin (LayerNorm, softmax)'),
    'swin_t_prepbn': (osp.join(MINI, 'mask_rcnn_swin_t_prepbn.py'), 'Swin-T-PRepBN (softmax)'),
    'slab_swin_t': (osp.join(MINI, 'mask_rcnn_slab_swin_t.py'), 'SLAB-Swin-T (SLA, PRepBN)'),
    'slab_pvt_t_repbn': (osp.join(HERE, 'configs', 'slab_pvt_t_repbn.py'), 'SLAB-PVT-T, RepBN from the start'),
    'slab_pvt_t_ln': (osp.join(HERE, 'configs', 'slab_pvt_t_ln.py'), 'SLAB-PVT-T, LayerNorm throughout'),
    'slab_pvt_t_dyt': (osp.join(HERE, 'configs', 'slab_pvt_t_dyt.py'), 'SLAB-PVT-T, DyT'),
}
SEEDS = (0, 1, 2)


def result_path(results, row, seed):
    return osp.join(results, f'{row}_s{seed}.json')


def pending_runs(rows, seeds, results):
    """The (row, seed) pairs without a result file, seed-major (every row's seed 0 first, so
    that an interrupted study has every row at least once)."""
    return [(row, seed) for seed in seeds for row in rows if not osp.exists(result_path(results, row, seed))]


def summarise_run(rows, log_text):
    """The result of one training from its scalars and its log: metrics, the largest loss, and
    whether (and at which g and iteration) it diverged: a non-finite loss, or a log that says so."""
    train = [r for r in rows if 'loss' in r]
    val = [r for r in rows if 'coco/bbox_mAP' in r]
    bad = next((r for r in train if not math.isfinite(r['loss'])), None)
    diverged = bad is not None or 'loss is nan' in log_text.lower() or 'non-finite' in log_text.lower()
    finite = [r['loss'] for r in train if math.isfinite(r['loss'])]
    last = val[-1] if val else {}
    return dict(
        bbox_mAP=last.get('coco/bbox_mAP'), segm_mAP=last.get('coco/segm_mAP'),
        bbox_mAP_50=last.get('coco/bbox_mAP_50'), segm_mAP_50=last.get('coco/segm_mAP_50'),
        max_loss=max(finite) if finite else None, final_loss=finite[-1] if finite else None,
        iterations=train[-1].get('iter') if train else None,
        diverged=diverged,
        diverged_at_iter=(bad or {}).get('iter') if diverged else None,
        diverged_at_g=(bad or (train[-1] if train else {})).get('prepbn_g') if diverged else None)


def host_facts():
    try:
        commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return dict(cpu=cpu_model(), cpu_count=os.cpu_count(), python=platform.python_version(), commit=commit)


def run_one(row, seed, results, work_root, threads, extra_options, log=print):
    """Train ``row`` with ``seed``; write its result file (also for a run that diverged or
    failed, which is a result of the study; a failed run says why in 'error')."""
    config = ROWS[row][0]
    work_dir = osp.join(work_root, f'{row}_s{seed}')
    os.makedirs(work_dir, exist_ok=True)
    cmd = [sys.executable, osp.join(ROOT, 'tools', 'train.py'), config, '--work-dir', work_dir,
           '--cfg-options', f'randomness.seed={seed}', *extra_options]
    # This checkout first: a cached environment shared by several clones may have its editable
    # install pointing at another one (tools/setup_env.sh re-points it; a direct run does not).
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
    log(f'[table3] start {row} seed {seed} ({threads} thread(s)) -> {work_dir}')
    facts = host_facts()   # the commit the run starts from
    start = time.time()
    with open(osp.join(work_dir, 'stdout.txt'), 'w') as f:
        rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    seconds = time.time() - start
    with open(osp.join(work_dir, 'stdout.txt')) as f:
        text = f.read()
    result = dict(row=row, seed=seed, config=osp.relpath(config, ROOT), rc=rc, seconds=round(seconds),
                  threads=threads, options=list(extra_options), **summarise_run(training_scalars(work_dir), text),
                  **facts, date=time.strftime('%Y-%m-%dT%H:%M:%S%z'))
    if rc != 0:
        result['error'] = f'exit {rc}: ' + ' | '.join(text.strip().splitlines()[-3:])[-400:]
    if rc != 0 and not result['diverged']:
        # Not a finding of the study (a crash, a kill): no result file, so a re-run retries it.
        log(f'[table3] FAILED {row} seed {seed} after {seconds:.0f} s ({result["error"]}); not recorded')
        return result
    write_json(result_path(results, row, seed), result)
    log(f'[table3] done {row} seed {seed} in {seconds:.0f} s: bbox mAP {result["bbox_mAP"]}, '
        f'diverged {result["diverged"]}')
    return result


def run_study(rows, seeds, results=RESULTS, work_root=WORK, jobs=1, budget_min=None, extra_options=(),
              run=run_one, clock=time.time, log=print):
    """Run every pending (row, seed), ``jobs`` at a time; start none after ``budget_min`` minutes.
    Returns the results of the runs started."""
    os.makedirs(results, exist_ok=True)
    todo = pending_runs(rows, seeds, results)
    done = len(rows) * len(seeds) - len(todo)
    log(f'[table3] {len(todo)} runs to do ({done} done) -> {results}; {jobs} at a time'
        + (f', none started after {budget_min} min' if budget_min is not None else ''))
    start = clock()
    threads = max(1, (os.cpu_count() or 2) // jobs)

    def job(pair):
        if budget_min is not None and clock() - start > budget_min * 60:
            log(f'[table3] budget of {budget_min} min spent: {pair[0]} seed {pair[1]} not started')
            return None
        return run(*pair, results, work_root, threads, list(extra_options), log=log)

    with ThreadPoolExecutor(jobs) as pool:
        return [r for r in pool.map(job, todo) if r is not None]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rows', nargs='+', default=list(ROWS), metavar='ROW', help='rows to run (default: all)')
    parser.add_argument('--seeds', nargs='+', type=int, default=list(SEEDS), help='default: 0 1 2')
    parser.add_argument('--jobs', type=int, default=2, help='trainings at once, one thread each on 2 cores '
                                                             '(default 2: twice the throughput of 1)')
    parser.add_argument('--budget-min', type=float, default=None,
                        help='start no run after this many minutes (default: no limit)')
    parser.add_argument('--results', default=RESULTS, help='result files (default: %(default)s)')
    parser.add_argument('--work-root', default=WORK, help='training work dirs (default: %(default)s)')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='appended to every run (e.g. a shorter schedule for a trial)')
    parser.add_argument('--list', action='store_true', help='list the rows and their state, and exit')
    args = parser.parse_args(argv)
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        parser.error(f'unknown rows {unknown}; known: {", ".join(ROWS)}')
    if args.jobs < 1:
        parser.error(f'--jobs must be >= 1, got {args.jobs}')
    if args.budget_min is not None and args.budget_min < 0:
        parser.error(f'--budget-min must be >= 0, got {args.budget_min}')
    if args.list:
        for row, (config, what) in ROWS.items():
            have = [s for s in args.seeds if osp.exists(result_path(args.results, row, s))]
            print(f'{row:18s} {what:36s} seeds done: {have or "none"}  ({osp.relpath(config, ROOT)})')
        return []
    return run_study(args.rows, args.seeds, args.results, args.work_root, args.jobs, args.budget_min,
                     args.cfg_options)


if __name__ == '__main__':
    main()
