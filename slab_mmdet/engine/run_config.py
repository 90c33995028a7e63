"""Config handling shared by ``tools/train.py`` and ``tools/test.py``.

Both entry points load a config, apply ``--cfg-options`` and ``--work-dir`` the way
mmdet's own tools do, and build a Runner from it; this module is that common part.
"""
import os.path as osp

from mmengine.config import Config
from mmengine.runner import Runner
from mmdet.registry import RUNNERS


def load_run_config(config, cfg_options=None, work_dir=None, launcher='none'):
    """Load ``config`` for a train/test run.

    Args:
        config (str): Path of the config file.
        cfg_options (dict | None): ``--cfg-options`` overrides, merged into the config.
        work_dir (str | None): Work directory. Priority: this argument, then the
            config's ``work_dir``, then ``./work_dirs/<config name>``.
        launcher (str): Job launcher (``none``, ``pytorch``, ``slurm``, ``mpi``).

    Raises:
        FileNotFoundError: ``config`` does not exist.
    """
    if not osp.isfile(config):
        raise FileNotFoundError(f'config file not found: {config}')
    cfg = Config.fromfile(config)
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    return cfg


def build_runner(cfg):
    """The runner the config's ``runner_type`` names (mmdet's registry, which also
    sees mmengine's), else mmengine's ``Runner``."""
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)
