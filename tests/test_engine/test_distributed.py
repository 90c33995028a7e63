"""Distributed training on the engine users run: 2 CPU processes (gloo,
``--launcher pytorch``) train a SLAB-PVT Mask R-CNN on mini COCO; every rank must
see the same g at every iteration and keep identical weights. And SyncBN conversion
reaches the BatchNorm inside RepBN."""
import json
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from mmengine.model import convert_sync_batchnorm

from slab_mmdet.models.layers import PRepBN, RepBN
from testing_utils.helpers import REPO_ROOT

MAX_ITERS = 4



def rank_records(work_dir):
    """Each rank's probe records (one per iteration), checked to cover every iteration."""
    records = []
    for rank in (0, 1):
        with open(work_dir / f'probe_rank{rank}.jsonl') as f:
            records.append([json.loads(line) for line in f])
    assert [len(r) for r in records] == [MAX_ITERS, MAX_ITERS]
    return records

def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def write_child_config(path, mini_coco):
    root = mini_coco.rstrip('/') + '/'
    path.write_text(f"""
_base_ = '{REPO_ROOT}/configs/mini/mask_rcnn_slab_pvt_t.py'
custom_imports = dict(imports=['slab_mmdet', 'dist_probe'], allow_failed_imports=False)
custom_hooks = [dict(type='PRepBNHook', anneal_iters={MAX_ITERS}), dict(type='DistProbeHook')]
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters={MAX_ITERS}, val_interval={MAX_ITERS},
                 val_begin={MAX_ITERS + 1})
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end={MAX_ITERS})]
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval={MAX_ITERS}, by_epoch=False),
                     logger=dict(type='LoggerHook', interval=1))
log_processor = dict(by_epoch=False, window_size=1)
model = dict(train_cfg=dict(rpn_proposal=dict(nms_pre=200, max_per_img=100), rcnn=dict(sampler=dict(num=64))))
train_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root='{root}', pipeline=[
                            dict(type='LoadImageFromFile'),
                            dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                            dict(type='Resize', scale=(256, 192), keep_ratio=True),
                            dict(type='PackDetInputs')]))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(data_root='{root}'))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file='{root}annotations/instances_val.json')
test_evaluator = val_evaluator
""")


@pytest.mark.slow
def test_two_cpu_processes_train_with_identical_g_and_weights(mini_coco, tmp_path):
    config = tmp_path / 'dist_config.py'
    write_child_config(config, mini_coco)
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join([REPO_ROOT, osp.join(REPO_ROOT, 'tests', 'probes'),
                                           os.environ.get('PYTHONPATH', '')]))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={free_port()}',
           osp.join(REPO_ROOT, 'tools', 'train.py'), str(config), '--launcher', 'pytorch',
           '--work-dir', str(tmp_path / 'work')]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]

    records = rank_records(tmp_path / 'work')
    for a, b in zip(*records):
        assert a['world_size'] == b['world_size'] == 2
        assert a['wrapped'] == b['wrapped'] == 'MMDistributedDataParallel'
        assert a['g'] == b['g'] and len(a['g']) == 24      # identical g in every PRepBN
        assert a['checksum'] == pytest.approx(b['checksum'], rel=1e-9)   # weights stay in sync
        assert a['loss'] is not None and b['loss'] is not None
    g_after = [next(iter(r['g'].values())) for r in records[0]]
    assert g_after == [(MAX_ITERS - t - 1) / MAX_ITERS for t in range(MAX_ITERS)]  # annealed to 0
    checksums = [r['checksum'] for r in records[0]]
    assert len(set(checksums)) == MAX_ITERS   # the weights change: training proceeds
    assert (tmp_path / 'work' / f'iter_{MAX_ITERS}.pth').exists()


def test_sync_bn_conversion_reaches_the_batchnorm_inside_repbn():
    from mmdet.registry import MODELS
    backbone = MODELS.build(dict(type='SLABPyramidVisionTransformer', arch='tiny'))
    num_repbn = sum(isinstance(m, RepBN) for m in backbone.modules())
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(backbone)
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in converted.modules()) == num_repbn > 0
    assert all(isinstance(m.bn, nn.SyncBatchNorm) for m in converted.modules() if isinstance(m, RepBN))
    # mmengine's helper (what `sync_bn='torch'` in a config uses) does the same.
    again = convert_sync_batchnorm(MODELS.build(dict(type='SLABPyramidVisionTransformer', arch='tiny')))
    assert all(isinstance(m.bn, nn.SyncBatchNorm) for m in again.modules() if isinstance(m, RepBN))
    # In eval mode (running statistics) a SyncBatchNorm runs anywhere; same outputs.
    for m in converted.modules():
        if isinstance(m, PRepBN):
            m.set_g(0.0)
    converted.eval()
    plain = MODELS.build(dict(type='SLABPyramidVisionTransformer', arch='tiny')).eval()
    plain.load_state_dict(converted.state_dict())
    for m in plain.modules():
        if isinstance(m, PRepBN):
            m.set_g(0.0)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(plain(x), converted(x)):
            torch.testing.assert_close(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='SyncBatchNorm trains only on a GPU')
def test_sync_bn_trains_on_a_gpu():
    from mmdet.registry import MODELS
    backbone = nn.SyncBatchNorm.convert_sync_batchnorm(
        MODELS.build(dict(type='SLABPyramidVisionTransformer', arch='tiny'))).cuda().train()
    for m in backbone.modules():
        if isinstance(m, PRepBN):
            m.set_g(0.5)
    out = backbone(torch.randn(2, 3, 64, 64, device='cuda'))
    sum(o.mean() for o in out).backward()
    assert all(torch.isfinite(o).all() for o in out)


@pytest.mark.slow
def test_two_nodes_over_the_loopback_train_with_identical_g_and_loss(mini_coco, tmp_path):
    """Two "nodes" of one process each (torchrun --nnodes 2, node ranks 0 and 1, gloo over
    127.0.0.1), as a user launches several machines: every iteration both ranks hold the same
    g and weights; both train on the same image (the dataset is one image twice, the RoI
    samplers share the seed), so they report the same loss too."""
    config = tmp_path / 'dist_config.py'
    write_child_config(config, mini_coco)
    with open(config, 'a') as f:
        f.write("train_dataloader['dataset']['indices'] = [0, 0]\n"
                "train_dataloader['sampler'] = dict(type='DefaultSampler', shuffle=False)\n"
                "train_dataloader['batch_sampler'] = None\n")
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join([REPO_ROOT, osp.join(REPO_ROOT, 'tests', 'probes'),
                                           os.environ.get('PYTHONPATH', '')]))
    port = free_port()
    nodes = [subprocess.Popen(
        [sys.executable, '-m', 'torch.distributed.run', '--nnodes=2', f'--node_rank={rank}', '--nproc_per_node=1',
         '--master_addr=127.0.0.1', f'--master_port={port}', osp.join(REPO_ROOT, 'tools', 'train.py'), str(config),
         '--launcher', 'pytorch', '--work-dir', str(tmp_path / 'work')],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=900) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-3000:] for _, err in outputs]

    records = rank_records(tmp_path / 'work')
    for a, b in zip(*records):
        assert a['world_size'] == b['world_size'] == 2
        assert a['g'] == b['g']
        assert a['loss'] == pytest.approx(b['loss'], rel=1e-6)
        assert a['checksum'] == pytest.approx(b['checksum'], rel=1e-9)
    assert [next(iter(r['g'].values())) for r in records[0]] == [(MAX_ITERS - t - 1) / MAX_ITERS
                                                                for t in range(MAX_ITERS)]
