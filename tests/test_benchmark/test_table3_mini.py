"""The mini-scale Table 3 study (benchmarks/table3_mini): the runner skips finished runs, starts
none after its budget, records diverged runs and not crashed ones; the report builds the table
from whatever result files exist and marks the missing ones. No training here."""
import json
import os.path as osp

import pytest

from testing_utils.helpers import load_script


def _load(name):
    return load_script(f'benchmarks/table3_mini/{name}.py', f'table3_mini_{name}_under_test')


runner, report = _load('run'), _load('report')


def _result(row, seed, bbox, segm=0.3, diverged=False, max_loss=2.0, g=None):
    return dict(row=row, seed=seed, bbox_mAP=None if diverged else bbox, segm_mAP=None if diverged else segm,
                max_loss=max_loss, diverged=diverged, diverged_at_g=g, diverged_at_iter=120 if diverged else None,
                seconds=600)


def _write(folder, result):
    with open(runner.result_path(str(folder), result['row'], result['seed']), 'w') as f:
        json.dump(result, f)


def test_every_row_config_exists():
    assert all(osp.isfile(config) for config, _ in runner.ROWS.values())
    assert set(report.LATENCY) <= set(runner.ROWS)


def test_pending_runs_skip_finished_ones_seed_major(tmp_path):
    _write(tmp_path, _result('slab_pvt_t', 0, 0.3))
    assert runner.pending_runs(['pvt_t_twin', 'slab_pvt_t'], [0, 1], str(tmp_path)) == [
        ('pvt_t_twin', 0), ('pvt_t_twin', 1), ('slab_pvt_t', 1)]


def test_the_study_resumes_and_starts_nothing_after_its_budget(tmp_path):
    _write(tmp_path, _result('pvt_t_twin', 0, 0.3))
    now = [0.0]
    started = []

    def fake_run(row, seed, results, work_root, threads, options, log):
        started.append((row, seed, threads))
        now[0] += 600.0     # each run takes 10 minutes
        _write(results, _result(row, seed, 0.3))
        return dict(row=row, seed=seed)

    rows = ['pvt_t_twin', 'slab_pvt_t']
    out = runner.run_study(rows, [0, 1], results=str(tmp_path), work_root=str(tmp_path / 'work'), jobs=1,
                           budget_min=15, run=fake_run, clock=lambda: now[0], log=lambda m: None)
    # pvt_t_twin s0 was done; slab_pvt_t s0 starts at 0 min, pvt_t_twin s1 at 10 min; at 20 min
    # the 15-minute budget is spent, so slab_pvt_t s1 does not start.
    assert [(r, s) for r, s, _ in started] == [('slab_pvt_t', 0), ('pvt_t_twin', 1)]
    assert len(out) == 2
    assert runner.pending_runs(rows, [0, 1], str(tmp_path)) == [('slab_pvt_t', 1)]
    # Re-running continues with what is left.
    runner.run_study(rows, [0, 1], results=str(tmp_path), work_root=str(tmp_path / 'work'), jobs=1,
                     run=fake_run, clock=lambda: now[0], log=lambda m: None)
    assert runner.pending_runs(rows, [0, 1], str(tmp_path)) == []


def test_a_run_that_diverges_says_at_which_g_and_iteration():
    rows = [dict(iter=20, loss=3.0, prepbn_g=0.9), dict(iter=40, loss=5.5, prepbn_g=0.7),
            dict(iter=60, loss=float('nan'), prepbn_g=0.55), dict(iter=80, loss=float('nan'), prepbn_g=0.4)]
    out = runner.summarise_run(rows, 'training log')
    assert out['diverged'] and out['diverged_at_g'] == 0.55 and out['diverged_at_iter'] == 60
    assert out['max_loss'] == 5.5 and out['bbox_mAP'] is None
    fine = runner.summarise_run([dict(iter=20, loss=2.0, prepbn_g=0.5), dict(iter=500, loss=1.0, prepbn_g=0.0),
                                 {'coco/bbox_mAP': 0.35, 'coco/segm_mAP': 0.41, 'step': 5}], '')
    assert not fine['diverged'] and fine['bbox_mAP'] == 0.35 and fine['segm_mAP'] == 0.41
    assert fine['max_loss'] == 2.0 and fine['iterations'] == 500


def test_a_crashed_run_leaves_no_result_so_a_rerun_retries_it(tmp_path, monkeypatch):
    monkeypatch.setattr(runner.subprocess, 'call', lambda cmd, **kw: (kw['stdout'].write('Traceback: boom\n'), 1)[1])
    out = runner.run_one('slab_pvt_t', 0, str(tmp_path), str(tmp_path / 'work'), 1, [], log=lambda m: None)
    assert out['rc'] == 1 and 'boom' in out['error']
    assert not osp.exists(runner.result_path(str(tmp_path), 'slab_pvt_t', 0))


def test_report_on_a_partial_results_folder(tmp_path):
    for seed, bbox in enumerate([0.30, 0.34, 0.32]):
        _write(tmp_path, _result('slab_pvt_t', seed, bbox))
    _write(tmp_path, _result('pvt_t_twin', 1, 0.31))
    _write(tmp_path, _result('slab_pvt_t_repbn', 0, None, diverged=True, max_loss=40.0, g=0.0))
    record = dict(comparisons={'pvt_t_twin_mask_rcnn': [dict(model='mask_rcnn_pvt_t_twin', median=1.0),
                                                        dict(model='mask_rcnn_slab_pvt_t (fused)', median=0.8)]})
    table = {t['row']: t for t in report.summarise(report.load_results(str(tmp_path)), record)}
    slab = table['slab_pvt_t']
    assert slab['bbox_mean'] == pytest.approx(0.32) and slab['bbox_sd'] == pytest.approx(0.02)
    assert slab['missing'] == [] and slab['detector_ratio'] == 0.8 and slab['backbone_ratio'] is None
    assert table['pvt_t_twin']['missing'] == [0, 2] and table['pvt_t_twin']['bbox_sd'] is None
    assert table['slab_pvt_t_repbn']['diverged'] == [(0, 0.0, 120)]
    assert table['slab_pvt_t_dyt']['runs'] == 0 and table['slab_pvt_t_dyt']['missing'] == [0, 1, 2]
    text = report.render_table(list(table.values()))
    assert '| slab_pvt_t | SLAB-PVT-T (SLA, PRepBN) | 3 | 0.320 ± 0.020 |' in text
    assert '| slab_pvt_t_repbn |' in text and '(0, 0, 120)' in text
    assert '| slab_pvt_t_dyt | SLAB-PVT-T, DyT | 0 | – | – | – | – |' in text


def test_report_cli_writes_table_and_plot(tmp_path, capsys):
    results = tmp_path / 'results'
    results.mkdir()
    _write(results, _result('slab_pvt_t', 0, 0.33))
    report.main(['--results', str(results), '--out', str(tmp_path / 'out')])
    assert '0.330' in (tmp_path / 'out' / 'table3_mini.md').read_text()
    with open(tmp_path / 'out' / 'map_vs_latency.png', 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    with pytest.raises(SystemExit):
        report.main(['--results', str(tmp_path / 'nowhere')])
    assert 'results folder not found' in capsys.readouterr().err
