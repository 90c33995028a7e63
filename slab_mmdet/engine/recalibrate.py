"""BatchNorm recalibration: recompute BN running statistics with frozen weights.

The running statistics that training leaves in a BatchNorm are an exponential
average over batches seen with ever-changing weights. The SLAB paper (appendix A)
recomputes them at the end of training with the weights frozen: every BatchNorm
averages the batch statistics of N batches (``momentum=None``: cumulative average),
everything else runs in eval mode (no dropout, no drop-path).
"""
import logging
import os.path as osp

import torch
from mmengine.dist import all_reduce, get_world_size
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from torch.nn.modules.batchnorm import _BatchNorm

from slab_mmdet.models.layers.prepbn import iter_prepbn
from slab_mmdet.utils import is_int


def unwrap_model(model):
    """The model inside an mmengine model wrapper (e.g. DDP), or the model itself."""
    return model.module if is_model_wrapper(model) else model


def bn_layers_to_recalibrate(model):
    """``[(name, bn)]``: the BatchNorm layers whose statistics training updates.

    That is every ``_BatchNorm`` that tracks running statistics and that the model
    keeps in train mode under ``model.train()``; layers a model freezes in its
    ``train()`` (e.g. ``norm_eval=True`` backbones) are left alone. The model's
    train/eval modes are restored.
    """
    net = unwrap_model(model)
    modes = [(m, m.training) for m in net.modules()]
    try:
        net.train()
        return [(name, m) for name, m in net.named_modules()
                if isinstance(m, _BatchNorm) and m.track_running_stats and m.training]
    finally:
        for m, mode in modes:
            m.training = mode


def _forward(net, batch):
    data = net.data_preprocessor(batch, True)
    if hasattr(net, 'extract_feat') and isinstance(data, dict):
        net.extract_feat(data['inputs'])
    elif isinstance(data, dict):
        net(**data, mode='tensor')
    elif isinstance(data, (list, tuple)):
        net(*data, mode='tensor')
    else:
        raise TypeError(f'recalibrate_bn: the data preprocessor returned a {type(data).__name__}; '
                        f'expected a dict, list or tuple')


def _batches(data_loader, num_iters):
    """``num_iters`` batches, going through ``data_loader`` again if it is shorter."""
    done = 0
    while done < num_iters:
        seen = 0
        for batch in data_loader:
            seen += 1
            yield batch
            done += 1
            if done == num_iters:
                return
        if seen == 0:
            raise ValueError('recalibrate_bn: the data loader yielded no batch')


@torch.no_grad()
def recalibrate_bn(model, data_loader, num_iters, logger=None):
    """Recompute the running statistics of every trainable BatchNorm in ``model``.

    The model runs in eval mode (dropout and drop-path off), except the BatchNorm
    layers of :func:`bn_layers_to_recalibrate`: those run in train mode with
    ``momentum=None`` from reset statistics, so after ``num_iters`` batches their
    running mean/var are the averages of the per-batch mean and unbiased variance.
    Each batch goes through ``model.data_preprocessor(batch, True)`` and then
    ``model.extract_feat(inputs)`` (detectors) or ``model(**data, mode='tensor')``,
    without gradients. Weights do not change; modes and momenta are restored. In a
    distributed run every rank must call this; the statistics are averaged over ranks.

    A BatchNorm that no batch reached (e.g. the BN branch of a PRepBN with g = 1)
    keeps its previous statistics, with a warning. If anything fails, all statistics
    are restored.

    Args:
        model (nn.Module): An mmengine model (or a wrapper of one) with a ``data_preprocessor``.
        data_loader (Iterable): Batches as the train dataloader yields them; gone
            through again if it has fewer than ``num_iters``.
        num_iters (int): Number of batches, >= 1.
        logger (logging.Logger | str, optional): Where progress goes
            (:func:`mmengine.logging.print_log`; None prints).

    Returns:
        list[str]: Names of the recalibrated BatchNorm layers.
    """
    if not is_int(num_iters) or num_iters < 1:
        raise ValueError(f'recalibrate_bn: num_iters must be an int >= 1, got {num_iters!r}')
    net = unwrap_model(model)
    targets = bn_layers_to_recalibrate(net)
    if not targets:
        raise ValueError(
            f'recalibrate_bn: {type(net).__name__} has no BatchNorm layer that training updates, so there is '
            f'nothing to recalibrate. SLAB models get theirs from PRepBN/RepBN norms, e.g. '
            f'`model.backbone.norm_cfg = dict(type="PRepBN")`.')
    try:
        length = len(data_loader)
    except TypeError:
        length = None
    if length is not None and length < num_iters:
        print_log(f'recalibrate_bn: the data loader has {length} batches, fewer than the {num_iters} asked '
                  f'for; going through it again', logger=logger, level=logging.WARNING)

    modes = [(m, m.training) for m in net.modules()]
    saved = {name: (bn.momentum, bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
             for name, bn in targets}

    def restore_stats(name, bn):
        _, mean, var, count = saved[name]
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.num_batches_tracked.copy_(count)

    ok = False
    try:
        net.eval()
        for _, bn in targets:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        every = max(1, num_iters // 10)
        print_log(f'recalibrate_bn: {len(targets)} BatchNorm layers, {num_iters} batches', logger=logger)
        for i, batch in enumerate(_batches(data_loader, num_iters), 1):
            _forward(net, batch)
            if i % every == 0 or i == num_iters:
                print_log(f'recalibrate_bn: [{i}/{num_iters}] batches', logger=logger)
        unreached = [name for name, bn in targets if int(bn.num_batches_tracked) == 0]
        for name, bn in targets:
            if name in unreached:
                restore_stats(name, bn)
        if unreached:
            print_log(f'recalibrate_bn: no batch reached {len(unreached)} BatchNorm layer(s), which keep their '
                      f'previous statistics: {unreached[:10]}', logger=logger, level=logging.WARNING)
        if get_world_size() > 1:
            for name, bn in targets:
                all_reduce(bn.running_mean, op='mean')
                all_reduce(bn.running_var, op='mean')
        ok = True
    finally:
        for name, bn in targets:
            bn.momentum = saved[name][0]
            if not ok:
                restore_stats(name, bn)
        for m, mode in modes:
            m.training = mode
    return [name for name, _ in targets if name not in unreached]


def recalibrate_checkpoint(config, checkpoint, num_iters, out=None, cfg_options=None, device=None, seed=0,
                           logger=None):
    """Load ``checkpoint`` into the model of ``config``, recalibrate its BatchNorms, save the result.

    The model and the train dataloader are built from the config (after merging
    ``cfg_options``), the checkpoint is loaded strictly, :func:`recalibrate_bn` runs
    ``num_iters`` batches, and a checkpoint with ``state_dict`` and ``meta`` (the
    input's meta plus ``meta['bn_recalibration']``) is written.

    Args:
        config (str): Config file path.
        checkpoint (str): Checkpoint path (or URL).
        num_iters (int): Number of batches, >= 1.
        out (str, optional): Output path. Default: ``<checkpoint>_bn_recalibrated.pth``
            beside the input.
        cfg_options (dict, optional): Overrides merged into the config.
        device (str, optional): Default: 'cuda' if available, else 'cpu'.
        seed (int): Seed of the dataloader's sampler. Default: 0.
        logger: See :func:`recalibrate_bn`.

    Returns:
        tuple[str, list[str]]: The output path and the recalibrated layer names.
    """
    from mmengine.runner import Runner
    from mmengine.runner.checkpoint import weights_to_cpu

    from slab_mmdet import apis

    if not osp.isfile(config):
        raise FileNotFoundError(f'config file not found: {config}')
    if '://' not in checkpoint and not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint file not found: {checkpoint}')
    if not is_int(num_iters) or num_iters < 1:
        raise ValueError(f'number of recalibration batches must be an int >= 1, got {num_iters!r}')
    if out is None:
        base = osp.basename(checkpoint) if '://' in checkpoint else checkpoint
        out = osp.splitext(base)[0] + '_bn_recalibrated.pth'
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')

    model = apis.load_detector(config, None, cfg_options, device=device)
    if not bn_layers_to_recalibrate(model):
        raise ValueError(
            f'{type(model).__name__} built from {config} has no BatchNorm layer that training updates, so there '
            f'is nothing to recalibrate. SLAB models get theirs from PRepBN/RepBN norms, e.g. '
            f'--cfg-options model.backbone.norm_cfg.type=PRepBN')
    apis.load_weights(model, checkpoint, strict=True, source=config)
    cfg = model.cfg
    annealing = [(name, m.g_value) for name, m in iter_prepbn(model) if m.g_value > 0]
    if annealing:
        print_log(f'recalibrate_checkpoint: {len(annealing)} PRepBN layer(s) still have g > 0 (largest '
                  f'{max(g for _, g in annealing):.6g}, e.g. {annealing[0][0]}): the model is not fully annealed, '
                  f'so its LayerNorm branches stay and only the BatchNorm branches are recalibrated',
                  logger=logger, level=logging.WARNING)
    loader = Runner.build_dataloader(cfg.train_dataloader, seed=seed)
    layers = recalibrate_bn(model, loader, num_iters, logger=logger)
    meta = dict(model.checkpoint_meta)
    meta['bn_recalibration'] = dict(iters=num_iters, layers=len(layers), source=checkpoint)
    apis.save_checkpoint(dict(meta=meta, state_dict=weights_to_cpu(model.state_dict())), out)
    return out, layers
