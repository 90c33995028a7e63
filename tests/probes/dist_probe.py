"""A hook for the distributed-training test: after every training iteration each
rank appends its PRepBN g values, its loss and a checksum of its weights to
``<work_dir>/probe_rank<r>.jsonl``. Imported through ``custom_imports``."""
import json
import os.path as osp

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from slab_mmdet.models.layers import iter_prepbn


@HOOKS.register_module()
class DistProbeHook(Hook):
    priority = 'LOWEST'

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        with torch.no_grad():
            checksum = float(sum(p.double().sum() for p in model.parameters()))
        record = dict(iter=runner.iter, world_size=runner.world_size, wrapped=type(runner.model).__name__,
                      g={name: m.g_value for name, m in iter_prepbn(model)},
                      loss=float(outputs['loss']) if 'loss' in outputs else None, checksum=checksum)
        with open(osp.join(runner.work_dir, f'probe_rank{get_rank()}.jsonl'), 'a') as f:
            f.write(json.dumps(record) + '\n')
