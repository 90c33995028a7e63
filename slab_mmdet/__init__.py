"""slab-mmdet: SLAB backbones, PRepBN and norm fusion for MMDetection 3.x.

``import slab_mmdet`` (or ``custom_imports=dict(imports=['slab_mmdet'])`` in a
config) registers every module of the plugin in the mmengine/mmdet registries and
allow-lists the types that mmengine writes into checkpoints, so that they load with
``torch.load(weights_only=True)``.
"""
from .version import __version__
from .apis import mmengine_allowlist  # noqa: F401  (allow-lists mmengine's checkpoint types)
from . import datasets, engine, models  # noqa: F401  (register modules)
from . import converters  # noqa: F401  (registers the released checkpoints' layouts the backbones recognise)

__all__ = ['__version__']
