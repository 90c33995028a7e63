"""Mixed-precision training on the CPU (CPUAmpOptimWrapper, what tools/train.py --amp picks
without a GPU), and a mini COCO run through the PRepBN anneal with --amp."""
import glob
import json
import os.path as osp

import pytest
import torch
import torch.nn as nn
from mmengine.optim import build_optim_wrapper

from slab_mmdet.engine import CPUAmpOptimWrapper, amp_optim_wrapper_type
from testing_utils.helpers import light_two_stage, mini_config, run_python


class TinyDetector(nn.Module):
    """A backbone, a neck and a head, named as in an mmdet detector."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(4, 4)
        self.neck = nn.Linear(4, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        feats = self.neck(self.backbone(x))
        return feats, self.head(feats)


def test_amp_selects_the_cpu_wrapper_without_a_gpu():
    assert amp_optim_wrapper_type() == ('AmpOptimWrapper' if torch.cuda.is_available() else 'CPUAmpOptimWrapper')


def test_backbone_and_neck_run_in_bf16_and_hand_float32_to_the_heads():
    model = TinyDetector()
    wrapper = build_optim_wrapper(model, dict(type='CPUAmpOptimWrapper', optimizer=dict(type='SGD', lr=0.1)))
    seen = {}
    model.head.register_forward_pre_hook(lambda m, args: seen.update(head_input=args[0].dtype,
                                                                     autocast=torch.is_autocast_enabled('cpu')))
    with wrapper.optim_context(model):
        feats, out = model(torch.randn(2, 4))
        assert model.backbone(torch.randn(2, 4)).dtype == torch.float32   # converted on the way out
    assert seen == dict(head_input=torch.float32, autocast=False)
    assert out.dtype == torch.float32
    assert not torch.is_autocast_enabled('cpu')
    assert not model.backbone._forward_pre_hooks and not model.neck._forward_hooks   # hooks removed
    wrapper.update_params(out.square().sum())   # no loss scaling: a plain step
    assert wrapper.loss_scaler.is_enabled() is False


def test_a_forward_that_raises_leaves_no_autocast_open():
    model = TinyDetector()
    wrapper = build_optim_wrapper(model, dict(type='CPUAmpOptimWrapper', optimizer=dict(type='SGD', lr=0.1)))
    model.neck.register_forward_pre_hook(lambda m, args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        with wrapper.optim_context(model):
            model(torch.randn(2, 4))
    assert not torch.is_autocast_enabled('cpu')


def test_a_model_without_backbone_runs_under_autocast_as_a_whole():
    model = nn.Linear(4, 4)
    wrapper = build_optim_wrapper(model, dict(type='CPUAmpOptimWrapper', optimizer=dict(type='SGD', lr=0.1)))
    with wrapper.optim_context(model):
        assert model(torch.randn(2, 4)).dtype == torch.bfloat16


@pytest.mark.parametrize('kwargs, message', [
    (dict(dtype='float16'), "bfloat16 only, got dtype='float16'"),
    (dict(loss_scale=512.0), 'without loss scaling, got loss_scale=512.0'),
])
def test_the_cpu_wrapper_refuses_what_it_cannot_do(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CPUAmpOptimWrapper(optimizer=torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), **kwargs)


MAX_ITERS, ANNEAL_ITERS = 6, 4


@pytest.mark.slow
def test_train_with_amp_through_the_anneal_then_fuse(mini_coco, tmp_path):
    """tools/train.py --amp on mini COCO while g goes 1 -> 0, then the fused model equals the unfused one."""
    cfg = light_two_stage(mini_config('configs/mini/mask_rcnn_slab_pvt_t.py', mini_coco, tmp_path / 'run',
                                      max_iters=MAX_ITERS, val=False))
    cfg.custom_hooks = [dict(type='PRepBNHook', anneal_iters=ANNEAL_ITERS)]
    cfg.param_scheduler = []
    cfg.optim_wrapper.optimizer.lr = 1e-4
    config = str(tmp_path / 'amp.py')
    cfg.dump(config)
    run = run_python(['tools/train.py', config, '--amp'], timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert 'CPUAmpOptimWrapper (bf16 autocast on the CPU' in run.stdout
    scalars = glob.glob(str(tmp_path / 'run' / '*' / 'vis_data' / 'scalars.json'))
    with open(scalars[0]) as f:
        records = [json.loads(line) for line in f if '"prepbn_g"' in line]
    g = [r['prepbn_g'] for r in records]
    # g crosses the open interval (0, 1): the blend of both branches ran under autocast.
    assert g == pytest.approx([(ANNEAL_ITERS - t) / ANNEAL_ITERS if t < ANNEAL_ITERS else 0.0
                               for t in range(MAX_ITERS)])
    assert all(torch.isfinite(torch.tensor(r['loss'])) for r in records)

    from slab_mmdet.deploy import fuse_checkpoint
    result = fuse_checkpoint(config, str(tmp_path / 'run' / f'iter_{MAX_ITERS}.pth'), str(tmp_path / 'deploy'),
                             image=osp.join(mini_coco, 'val', '000000000001.jpg'), logger=lambda *a: None)
    assert result['diff']['features'] < 1e-4
    assert result['report']['removed_norms'] > 0
