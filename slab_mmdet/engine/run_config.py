"""Config handling shared by ``tools/train.py`` and ``tools/test.py``.

Both entry points load a config, apply ``--cfg-options`` and ``--work-dir`` the way
mmdet's own tools do, and build a Runner from it; this module is that common part.
It also makes ``--launcher pytorch`` work on machines without CUDA (CPU training
with gloo), which mmengine 0.10.7 does not: see :func:`prepare_cpu_distributed`.
"""
import os
import os.path as osp

from mmengine.runner import Runner
from mmdet.registry import RUNNERS

from slab_mmdet.apis import load_config


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
    cfg = load_config(config, cfg_options)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    prepare_cpu_distributed(cfg)
    return cfg


def prepare_cpu_distributed(cfg):
    """Let a multi-process run (``--launcher pytorch``) train on CPUs.

    mmengine 0.10.7 calls ``torch.cuda.set_device`` while initialising the process
    group and wraps the model in DDP with ``device_ids=[local_rank]``; both fail
    without CUDA. When CUDA is absent this initialises the process group itself, with
    the config's backend if it is gloo (else gloo), so that mmengine skips its own
    initialisation, and makes the DDP wrapper CPU-ready (``device_ids=None``), keeping
    the config's ``find_unused_parameters``. Does nothing with a GPU or without a
    launcher.
    """
    import torch
    import torch.distributed as dist
    if cfg.get('launcher', 'none') != 'pytorch' or torch.cuda.is_available():
        return
    backend = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('backend', 'gloo')
    if backend != 'gloo':
        print(f'[slab_mmdet] no CUDA: using the gloo backend instead of {backend!r} for CPU training')
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo', rank=int(os.environ['RANK']),
                                world_size=int(os.environ['WORLD_SIZE']))
    wrapper = dict(type='MMDistributedDataParallel', broadcast_buffers=False,
                   find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper.update(cfg.get('model_wrapper_cfg') or {})
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper


def build_runner(cfg):
    """The runner the config's ``runner_type`` names (mmdet's registry, which also
    sees mmengine's), else mmengine's ``Runner``."""
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)
