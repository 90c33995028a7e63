from .hooks import *  # noqa: F401,F403
from .hooks import __all__ as _hooks_all
from .recalibrate import bn_layers_to_recalibrate, recalibrate_bn, recalibrate_checkpoint

__all__ = _hooks_all + ['bn_layers_to_recalibrate', 'recalibrate_bn', 'recalibrate_checkpoint']
