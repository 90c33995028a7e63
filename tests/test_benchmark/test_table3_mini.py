"""The mini-scale Table 3 study (benchmarks/table3_mini): the runner skips finished runs, starts
none after its budget, records diverged runs and not crashed ones; the report builds the table
from whatever result files exist and marks the missing ones. No training here."""
import json
import os.path as osp

import pytest

from testing_utils import REPO_ROOT
from testing_utils.helpers import load_script

STUDY = osp.join(REPO_ROOT, 'benchmarks', 'table3_mini')


def _load(name):
    return load_script(f'benchmarks/table3_mini/{name}.py', f'table3_mini_{name}_under_test')


runner, report = _load('run'), _load('report')


@pytest.fixture
def latency(monkeypatch):
    """latency.py, which imports its folder's run.py as a script does (its folder on sys.path)."""
    monkeypatch.syspath_prepend(STUDY)
    return _load('latency')


def _latency_run(folder, number, ratios):
    """A run<N>.json as latency.py writes it: {row: (backbone ratio, detector ratio)}."""
    rows = {row: dict(backbone=dict(median=b, p10=b, p90=b, n=1), detector=dict(median=d, p10=d, p90=d, n=1))
            for row, (b, d) in ratios.items()}
    folder.mkdir(exist_ok=True)
    with open(folder / f'run{number}.json', 'w') as f:
        json.dump(dict(rows=rows), f)


def _result(row, seed, bbox, segm=0.3, diverged=False, max_loss=2.0, g=None):
    return dict(row=row, seed=seed, bbox_mAP=None if diverged else bbox, segm_mAP=None if diverged else segm,
                max_loss=max_loss, diverged=diverged, diverged_at_g=g, diverged_at_iter=120 if diverged else None,
                seconds=600)


def _write(folder, result):
    with open(runner.result_path(str(folder), result['row'], result['seed']), 'w') as f:
        json.dump(result, f)


def test_every_row_config_exists(latency):
    assert all(osp.isfile(config) for config, _ in runner.ROWS.values())
    timed = [row for family in latency.FAMILIES.values() for row, _ in family]
    assert sorted(timed) == sorted(runner.ROWS)   # every row timed once, in its family
    # The twin, the reference of its family's ratios, is first and unfused.
    assert all(family[0] == (f'{name}_twin', 'none') for name, family in latency.FAMILIES.items())


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
    _latency_run(tmp_path / 'latency', 2, {'pvt_t_twin': (1.0, 1.0), 'slab_pvt_t': (0.74, 0.9)})
    _latency_run(tmp_path / 'latency', 1, {'pvt_t_twin': (1.0, 1.0), 'slab_pvt_t': (0.72, 0.88)})
    _latency_run(tmp_path / 'latency', 10, {'slab_swin_t': (0.98, 0.99)})
    runs = report.load_latency(str(tmp_path / 'latency'))
    assert [sorted(r['rows']) for r in runs] == [['pvt_t_twin', 'slab_pvt_t']] * 2 + [['slab_swin_t']]   # 1, 2, 10
    table = {t['row']: t for t in report.summarise(report.load_results(str(tmp_path)), runs)}
    slab = table['slab_pvt_t']
    assert slab['bbox_mean'] == pytest.approx(0.32) and slab['bbox_sd'] == pytest.approx(0.02)
    assert slab['missing'] == [] and slab['backbone_ratios'] == [0.72, 0.74] and slab['detector_ratios'] == [0.88, 0.9]
    assert table['slab_swin_t']['detector_ratios'] == [0.99] and table['swin_t_twin']['detector_ratios'] == []
    assert table['pvt_t_twin']['missing'] == [0, 2] and table['pvt_t_twin']['bbox_sd'] is None
    assert table['slab_pvt_t_repbn']['diverged'] == [(0, 0.0, 120)]
    assert table['slab_pvt_t_dyt']['runs'] == 0 and table['slab_pvt_t_dyt']['missing'] == [0, 1, 2]
    text = report.render_table(list(table.values()))
    assert '| slab_pvt_t | SLAB-PVT-T (SLA, PRepBN) | 3 | 0.320 ± 0.020 |' in text
    assert '| 0.72 / 0.74 | 0.88 / 0.90 |' in text
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
    with pytest.raises(SystemExit):
        report.main(['--results', str(results), '--latency', str(tmp_path / 'nowhere')])
    assert '--latency: no such folder' in capsys.readouterr().err


def test_latency_ratios_pair_each_rows_backbone_and_detector_with_the_twins(latency):
    # Two images; the backbone times come from the same pass's breakdown.
    def model(name, total, backbone):
        return dict(name=name, fused=name != 'twin', latency_ms=dict(mean=sum(total) / 2),
                    breakdown_ms=dict(backbone=sum(backbone) / 2),
                    ratio_to_first=dict(paired=dict(median=None)),
                    raw=dict(total_ms=total, breakdown_ms=dict(backbone=backbone)))
    summary = dict(models=[model('twin', [100.0, 200.0], [50.0, 100.0]),
                           model('slab', [90.0, 180.0], [40.0, 70.0])])
    summary['models'][1]['ratio_to_first']['paired'] = dict(median=0.9)
    out = latency.row_ratios(summary, ['pvt_t_twin', 'slab_pvt_t'])
    assert out['slab_pvt_t']['backbone']['median'] == pytest.approx(0.75)   # median of 0.8 and 0.7
    assert out['slab_pvt_t']['detector']['median'] == 0.9 and out['slab_pvt_t']['backbone_ms'] == 55.0
    assert out['pvt_t_twin']['backbone']['median'] == 1.0


def test_latency_needs_each_rows_trained_checkpoint(latency, tmp_path):
    with pytest.raises(SystemExit, match='no trained checkpoint for slab_pvt_t seed 0.*run.py --rows slab_pvt_t'):
        latency.trained_checkpoint(str(tmp_path), 'slab_pvt_t', 0)
    work = tmp_path / 'slab_pvt_t_s0'
    work.mkdir()
    (work / 'last_checkpoint').write_text(str(work / 'epoch_5.pth'))
    with pytest.raises(SystemExit, match='epoch_5.pth, which does not exist'):
        latency.trained_checkpoint(str(tmp_path), 'slab_pvt_t', 0)
    (work / 'epoch_5.pth').write_bytes(b'')
    assert latency.trained_checkpoint(str(tmp_path), 'slab_pvt_t', 0) == str(work / 'epoch_5.pth')
