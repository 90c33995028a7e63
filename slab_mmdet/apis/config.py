"""Config files by path or package name, loaded with ``--cfg-options`` merged into a copy."""
import copy
import os.path as osp

from mmengine.config import Config
from mmengine.utils import get_installed_path, is_installed


def resolve_config_path(config):
    """The file of ``config``: a path, or a package config such as ``mmdet::retinanet/x.py``.

    Raises FileNotFoundError naming the config and what would be valid.
    """
    path = config
    if '::' in config:
        package, _, relative = config.partition('::')
        if not is_installed(package):
            raise FileNotFoundError(f'config {config!r}: package {package!r} is not installed')
        path = osp.join(get_installed_path(package), '.mim', 'configs', relative)
    if not osp.isfile(path):
        raise FileNotFoundError(f'config not found: {config!r} (no file {path}); give a config file path '
                                f'or a package config such as mmdet::retinanet/retinanet_r18_fpn_1x_coco.py')
    return path


def load_config(config, cfg_options=None):
    """``config`` (a path, ``package::path`` or a loaded Config, which is copied) with
    ``cfg_options`` (a dict as from ``--cfg-options``) merged in.

    The options are merged from a deep copy: given ``{'model': {...}, 'model.backbone': ...}``,
    mmengine's ``merge_from_dict`` writes the dotted key into the caller's ``'model'`` dict.
    """
    cfg = copy.deepcopy(config) if isinstance(config, Config) else Config.fromfile(resolve_config_path(config))
    if cfg_options:
        cfg.merge_from_dict(copy.deepcopy(cfg_options))
    return cfg
