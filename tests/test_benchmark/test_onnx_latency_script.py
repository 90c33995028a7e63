"""benchmarks/onnx_latency.py: ratios pair each round with the reference's same round, and a
graph given with --graph is refused with a clear message when it names no comparison or file."""
import os.path as osp

import pytest

from testing_utils import REPO_ROOT
from testing_utils.helpers import load_script


@pytest.fixture
def script(monkeypatch):
    monkeypatch.syspath_prepend(osp.join(REPO_ROOT, 'benchmarks'))
    return load_script('benchmarks/onnx_latency.py', 'onnx_latency_benchmark_under_test')


def test_the_twins_are_the_references(script):
    assert all('twin' in group[0][0] for group in script.COMPARISONS.values())


def test_ratio_is_the_median_of_same_round_ratios(script):
    # Per round 0.5, 0.5, 2.0 -> 0.5; the ratio of the medians would be 1.0.
    assert script.median_ratio([1.0, 2.0, 8.0], [2.0, 4.0, 4.0]) == 0.5


def test_graph_argument_is_parsed_and_checked(script, tmp_path, capsys):
    assert script.graph_argument('pvt_s:old graph=a/b.onnx') == ('pvt_s', 'old graph', 'a/b.onnx')
    for bad in ('pvt_s=a.onnx', 'nope:label=a.onnx', 'pvt_s:label', 'pvt_s:=a.onnx'):
        with pytest.raises(Exception, match='COMPARISON:LABEL=PATH'):
            script.graph_argument(bad)
    with pytest.raises(SystemExit):
        script.main(['--graph', f'pvt_s:x={tmp_path / "missing.onnx"}'])
    assert 'no file' in capsys.readouterr().err
    (tmp_path / 'g.onnx').write_bytes(b'')
    with pytest.raises(SystemExit):
        script.main(['--only', 'swin_t', '--graph', f'pvt_s:x={tmp_path / "g.onnx"}'])
    assert "--graph for 'pvt_s'" in capsys.readouterr().err
