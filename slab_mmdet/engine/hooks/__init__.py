from .prepbn_hook import PREPBN_SCHEDULES, PRepBNHook, check_ddp_find_unused_parameters, check_schedule, prepbn_schedule

__all__ = ['PREPBN_SCHEDULES', 'PRepBNHook', 'check_ddp_find_unused_parameters', 'check_schedule', 'prepbn_schedule']
