from .backbones import *  # noqa: F401,F403
from .layers import *  # noqa: F401,F403
from . import timm_models  # noqa: F401  (registers the SLAB backbones with timm.create_model)
