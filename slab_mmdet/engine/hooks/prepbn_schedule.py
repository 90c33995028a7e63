"""The anneal factor of PRepBNHook: ``s(t)`` for each schedule (linear, cosine, step) and the
schedules' parameters, as functions of the iteration alone (so a resumed run sees the same values)."""
import math

from slab_mmdet.utils import is_int

# Each schedule's own parameters and their defaults.
PREPBN_SCHEDULES = {
    'linear': {},
    'cosine': {},
    'step': {'num_steps': 4},
}

def check_schedule(schedule, params):
    """Validate a schedule name and its parameters; return the parameters with defaults filled in."""
    if schedule not in PREPBN_SCHEDULES:
        raise ValueError(f'PRepBN schedule must be one of {sorted(PREPBN_SCHEDULES)}, got {schedule!r}')
    valid = PREPBN_SCHEDULES[schedule]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        takes = f'takes only {sorted(valid)}' if valid else 'takes no parameters'
        raise ValueError(f'PRepBN schedule {schedule!r} {takes}; got {unknown}. '
                         f'Parameters by schedule: {PREPBN_SCHEDULES}')
    params = {**valid, **params}
    if schedule == 'step':
        n = params['num_steps']
        if not is_int(n) or n < 1:
            raise ValueError(f"PRepBN schedule 'step': num_steps must be an int >= 1, got {n!r}")
    return params


def prepbn_schedule(t, T, schedule='linear', **params):
    """The anneal factor ``s(t)`` in [0, 1] at step ``t`` of an anneal of ``T`` steps.

    ``s(t) = 1`` for ``t < 0`` (warm-up) and ``0`` for ``t >= T``; for ``0 <= t < T``:

    * ``'linear'`` (the paper): ``(T - t) / T``;
    * ``'cosine'``: ``0.5 * (1 + cos(pi * t / T))``;
    * ``'step'`` (parameter ``num_steps``, default 4): ``1 - floor(num_steps * t / T) / num_steps``,
      i.e. drops of ``1 / num_steps`` at evenly spaced points.

    Args:
        t (int): Steps since the anneal started (negative during warm-up).
        T (int): Length of the anneal, >= 1.
        schedule (str): ``'linear'``, ``'cosine'`` or ``'step'``.
        **params: The schedule's own parameters (``num_steps`` for ``'step'``).
    """
    params = check_schedule(schedule, params)
    if not is_int(T) or T < 1:
        raise ValueError(f'PRepBN anneal length T must be an int >= 1, got {T!r}')
    if t < 0:
        return 1.0
    if t >= T:
        return 0.0
    if schedule == 'linear':
        return (T - t) / T
    if schedule == 'cosine':
        return 0.5 * (1.0 + math.cos(math.pi * t / T))
    n = params['num_steps']
    return 1.0 - math.floor(n * t / T) / n


__all__ = ['PREPBN_SCHEDULES', 'check_schedule', 'prepbn_schedule']
