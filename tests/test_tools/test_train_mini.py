"""Mask R-CNN with the SLAB backbones trains on mini COCO with the PRepBN hook.

Each run repeats one batch of two images (no shuffling, no flips), so that a few
iterations must lower the objectness and classification losses, while the hook anneals g linearly from 1 towards 0
(half-way within the run: a full anneal within a few iterations is too abrupt for a
network to follow, and the hook's tests cover complete anneals).
"""
import logging
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.logging import MMLogger
from mmengine.runner import Runner

from slab_mmdet.models.layers import iter_prepbn
from testing_utils.helpers import light_two_stage, mini_config

MAX_ITERS = 8
ANNEAL_ITERS = 16


def overfit_config(config, mini_coco, work_dir):
    cfg = light_two_stage(mini_config(config, mini_coco, work_dir, max_iters=MAX_ITERS, val=False))
    loader = cfg.train_dataloader
    loader.batch_size = 2
    loader.sampler = dict(type='DefaultSampler', shuffle=False)
    loader.pop('batch_sampler', None)
    loader.dataset.indices = 2
    loader.dataset.pipeline = [t for t in loader.dataset.pipeline if t['type'] != 'RandomFlip']
    # A constant learning rate: the mini schedule's 50-iteration warm-up would keep
    # these 8 iterations at ~1% of it, where noise outweighs progress.
    cfg.param_scheduler = []
    cfg.optim_wrapper.optimizer.lr = 1e-4
    cfg.custom_hooks = [dict(type='PRepBNHook', anneal_iters=ANNEAL_ITERS)]
    cfg.randomness = dict(seed=0)
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize('config', ['configs/mini/mask_rcnn_slab_pvt_t.py', 'configs/mini/mask_rcnn_slab_swin_t.py'])
def test_mask_rcnn_trains_with_the_hook_and_round_trips(config, mini_coco, tmp_path):
    runner = Runner.from_cfg(overfit_config(config, mini_coco, tmp_path))
    runner.train()
    scalars = runner.message_hub.log_scalars
    losses = scalars['train/loss'].data[0]
    g = scalars['train/prepbn_g'].data[0]
    assert len(losses) == MAX_ITERS and np.isfinite(losses).all()
    # Learning: objectness and classification losses fall. (The box and mask losses first
    # rise with the light heads, as more proposals turn positive, so the total may too.)
    for key in ('loss_rpn_cls', 'loss_cls'):
        part = scalars[f'train/{key}'].data[0]
        assert part[-2:].mean() < 0.95 * part[:2].mean(), (key, part)
    # g = (T - t) / T at iteration t; after the last step every PRepBN has g(MAX_ITERS).
    np.testing.assert_allclose(g, [(ANNEAL_ITERS - t) / ANNEAL_ITERS for t in range(MAX_ITERS)])
    final_g = (ANNEAL_ITERS - MAX_ITERS) / ANNEAL_ITERS
    model = runner.model
    assert all(m.g_value == final_g for _, m in iter_prepbn(model))

    # Save/load round trip: the checkpoint rebuilds the same detector, g included.
    from mmdet.apis import inference_detector, init_detector
    ckpt = osp.join(tmp_path, f'iter_{MAX_ITERS}.pth')
    MMLogger.get_current_instance().setLevel(logging.ERROR)
    loaded = init_detector(runner.cfg, ckpt, device='cpu')
    assert all(m.g_value == final_g for _, m in iter_prepbn(loaded))
    image = osp.join(mini_coco, 'val', '000000000001.jpg')
    model.eval()
    model.cfg = loaded.cfg   # what inference_detector reads the test pipeline from
    with torch.no_grad():
        a, b = inference_detector(model, image), inference_detector(loaded, image)
    torch.testing.assert_close(b.pred_instances.bboxes, a.pred_instances.bboxes)
    torch.testing.assert_close(b.pred_instances.scores, a.pred_instances.scores)
