"""A SLAB or PRepBN detector config's LayerNorm + softmax twin, derived from the config itself
(the backbone's ``twin_cfg``), written as a config file that inherits the source: what
``tools/benchmark_latency.py --twin`` times the given model against."""
import os
import os.path as osp

from mmdet.registry import MODELS

from ..models.backbones.base import SLABBackboneBase
from .candidates import load_config, resolve_config_path
from .errors import BenchmarkError

TWIN_SUFFIX = '_twin'
ANNEALING_HOOKS = ('PRepBNHook',)   # hooks a LayerNorm model has nothing for


def twin_backbone_cfg(config, cfg_options=None):
    """The twin's backbone config (a dict) of ``config`` (a path, ``package::path`` or a loaded Config).

    Raises BenchmarkError naming the backbone type when it is not a SLAB backbone (only these
    have a twin in this code), or when the model already is its own twin."""
    cfg = load_config(config, cfg_options)
    backbone = cfg.model.get('backbone')
    kind = backbone.get('type') if backbone is not None else None
    backbone_cls = MODELS.get(kind) if isinstance(kind, str) else kind
    slab = sorted(name for name, cls in MODELS.module_dict.items()
                  if isinstance(cls, type) and issubclass(cls, SLABBackboneBase))
    if not (isinstance(backbone_cls, type) and issubclass(backbone_cls, SLABBackboneBase)):
        raise BenchmarkError(f'{cfg.filename}: backbone type {kind!r} has no LayerNorm + softmax twin here; '
                             f'--twin needs a SLAB backbone ({", ".join(slab)})')
    source = backbone.to_dict() if hasattr(backbone, 'to_dict') else dict(backbone)
    attn_types = source.get('attn_types', backbone_cls.default_argument('attn_types'))
    norm = dict(source.get('norm_cfg') or backbone_cls.default_argument('norm_cfg'))
    if set(attn_types) == {'S'} and norm.get('type') == 'LN':
        raise BenchmarkError(f'{cfg.filename}: its backbone already is a LayerNorm + softmax model '
                             f'(attn_types {attn_types!r}, norm_cfg {norm}): it is its own twin; give the '
                             f'SLAB or PRepBN config instead')
    twin = backbone_cls.twin_cfg(source)
    return twin


def write_twin_config(config, out_dir, cfg_options=None):
    """Write ``<out_dir>/<config stem>_twin.py``, the twin of ``config`` (inheriting it: only the
    backbone and the hooks change); returns its path."""
    cfg = load_config(config, cfg_options)
    twin = twin_backbone_cfg(cfg)
    hooks = [h.to_dict() if hasattr(h, 'to_dict') else dict(h) for h in cfg.get('custom_hooks', [])]
    hooks = [h for h in hooks if h.get('type') not in ANNEALING_HOOKS]
    source = osp.abspath(resolve_config_path(config))
    stem = osp.splitext(osp.basename(source))[0]
    os.makedirs(out_dir, exist_ok=True)
    path = osp.join(out_dir, stem + TWIN_SUFFIX + '.py')
    with open(path, 'w') as f:
        f.write(f'# The LayerNorm + softmax twin of {source}\n'
                f'# (derived by slab_mmdet.benchmark.twin: softmax attention and LayerNorm everywhere).\n'
                f'_base_ = {source!r}\n'
                f'model = dict(backbone=dict(_delete_=True, **{twin!r}))\n'
                f'custom_hooks = {hooks!r}\n')
    return path
