from .hooks import *  # noqa: F401,F403
from .hooks import __all__ as _hooks_all
from .optim import CPUAmpOptimWrapper, amp_optim_wrapper_type
from .recalibrate import bn_layers_to_recalibrate, recalibrate_bn, recalibrate_checkpoint

__all__ = _hooks_all + ['CPUAmpOptimWrapper', 'amp_optim_wrapper_type', 'bn_layers_to_recalibrate', 'recalibrate_bn',
                        'recalibrate_checkpoint']
