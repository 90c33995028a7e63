"""The anneal factor s(t) of each PRepBN schedule, and the refusal of bad schedules."""
import math

import pytest

from slab_mmdet.engine import prepbn_schedule


def test_schedule_values():
    assert [prepbn_schedule(t, 10) for t in (-5, -1, 0, 1, 5, 9, 10, 11, 100)] == \
        [1.0, 1.0, 1.0, 0.9, 0.5, 0.1, 0.0, 0.0, 0.0]
    assert prepbn_schedule(0, 10, 'cosine') == 1.0
    assert prepbn_schedule(5, 10, 'cosine') == pytest.approx(0.5)
    assert prepbn_schedule(2, 10, 'cosine') == pytest.approx(0.5 * (1 + math.cos(math.pi / 5)))
    assert prepbn_schedule(10, 10, 'cosine') == 0.0 and prepbn_schedule(-1, 10, 'cosine') == 1.0
    # Default 4 steps over T = 8: drops of 1/4 every 2 iterations.
    assert [prepbn_schedule(t, 8, 'step') for t in range(-1, 10)] == \
        [1.0, 1.0, 1.0, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25, 0.0, 0.0]
    # 3 steps over T = 10: s = 1 - floor(3t/10)/3.
    assert [prepbn_schedule(t, 10, 'step', num_steps=3) for t in (0, 3, 4, 6, 7, 9, 10)] == \
        pytest.approx([1, 1, 2 / 3, 2 / 3, 1 / 3, 1 / 3, 0])
    assert prepbn_schedule(0, 1) == 1.0 and prepbn_schedule(1, 1) == 0.0


def test_schedule_errors():
    with pytest.raises(ValueError, match=r"one of \['cosine', 'linear', 'step'\], got 'exp'"):
        prepbn_schedule(0, 10, 'exp')
    with pytest.raises(ValueError, match=r"'linear' takes no parameters; got \['num_steps'\]"):
        prepbn_schedule(0, 10, 'linear', num_steps=4)
    with pytest.raises(ValueError, match=r"'step' takes only \['num_steps'\]; got \['steps'\]"):
        prepbn_schedule(0, 10, 'step', steps=4)
    with pytest.raises(ValueError, match='num_steps must be an int >= 1, got 0'):
        prepbn_schedule(0, 10, 'step', num_steps=0)
    with pytest.raises(ValueError, match='T must be an int >= 1, got 0'):
        prepbn_schedule(0, 0)
