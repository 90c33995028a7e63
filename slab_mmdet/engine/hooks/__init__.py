from .prepbn_hook import PRepBNHook, check_ddp_find_unused_parameters
from .prepbn_schedule import PREPBN_SCHEDULES, check_schedule, prepbn_schedule

__all__ = ['PREPBN_SCHEDULES', 'PRepBNHook', 'check_ddp_find_unused_parameters', 'check_schedule', 'prepbn_schedule']
