"""Shared helpers for tests: configs shrunk to run in seconds on a CPU."""
import os
import os.path as osp
import subprocess
import sys

from mmengine.config import Config

from . import REPO_ROOT


def mini_config(config, data_root, work_dir, max_iters=2, img_scale=(256, 192), val=True, num_workers=0):
    """Load a mini-COCO config and make it train for `max_iters` iterations on small images.

    The dataset root is `data_root` (a directory written by ensure_mini_coco), data
    loading runs in the main process, and the schedule becomes iteration based.
    """
    cfg = Config.fromfile(osp.join(REPO_ROOT, config) if not osp.isabs(config) else config)
    cfg.work_dir = str(work_dir)
    root = data_root.rstrip('/') + '/'
    for split in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg[split]
        loader.dataset.data_root = root
        loader.num_workers = num_workers
        loader.persistent_workers = False
        for t in loader.dataset.pipeline:
            if t['type'] == 'Resize':
                t['scale'] = img_scale
    for split in ('val_evaluator', 'test_evaluator'):
        cfg[split].ann_file = root + 'annotations/instances_val.json'
    # IterBasedTrainLoop also validates after the last iteration, whatever val_interval says:
    # val_begin past the end is what turns validation off (runner.val() still works).
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters,
                         val_begin=1 if val else max_iters + 1)
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=max_iters)]
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=max_iters, by_epoch=False)
    cfg.log_processor = dict(type='LogProcessor', window_size=1, by_epoch=False)
    return cfg


def load_script(relative_path, module_name):
    """A script of the checkout (``tools/x.py``, ``benchmarks/y/z.py``) imported as ``module_name``,
    so its functions can be tested without running it."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(module_name, osp.join(REPO_ROOT, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_python(args, cwd=REPO_ROOT, timeout=600, env=None):
    """Run `python args...` with this checkout first on sys.path; returns CompletedProcess."""
    full_env = dict(os.environ)
    full_env['PYTHONPATH'] = REPO_ROOT + os.pathsep + full_env.get('PYTHONPATH', '')
    full_env.setdefault('OMP_NUM_THREADS', '2')
    full_env.update(env or {})
    return subprocess.run([sys.executable] + list(args), cwd=cwd, env=full_env, timeout=timeout,
                          capture_output=True, text=True)


# ---------------------------------------------------------------------------
# A toy token model with PRepBN layers and a toy dataset, for Runner-based tests
# of PRepBNHook and BN recalibration (each run takes about a second on a CPU).
import uuid  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from mmengine.evaluator import BaseMetric  # noqa: E402
from mmengine.model import BaseModel  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402


class ToyTokenDataset(Dataset):
    """`num_samples` fixed random token sequences of shape (num_tokens, in_dim)."""

    def __init__(self, num_samples=8, num_tokens=6, in_dim=4, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(num_samples, num_tokens, in_dim, generator=gen) * 2 + 0.5

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return dict(inputs=self.x[i])


class ToyTokenModel(BaseModel):
    """Linear -> `num_layers` residual blocks [norm -> Linear] -> head, on (B, N, C) tokens.

    `norm` is a PRepBN unless `norm=...` builds something else (e.g. nn.LayerNorm).
    Every train forward (mode='loss') appends the g of each PRepBN to `train_g`,
    every val forward (mode='predict') to `val_g`.
    """

    def __init__(self, num_layers=3, dim=8, in_dim=4, norm=None, start_g=None, seed=0):
        super().__init__()
        from slab_mmdet.models.layers import PRepBN
        torch.manual_seed(seed)
        norm = norm or PRepBN
        self.proj = nn.Linear(in_dim, dim)
        self.blocks = nn.ModuleList(nn.Sequential(norm(dim), nn.Linear(dim, dim)) for _ in range(num_layers))
        self.head = nn.Linear(dim, 1)
        for i, g in enumerate(start_g or []):
            self.blocks[i][0].set_g(g)
        self.train_g = []
        self.val_g = []

    def prepbn_g(self):
        from slab_mmdet.models.layers import iter_prepbn
        return [m.g_value for _, m in iter_prepbn(self)]

    def forward(self, inputs, data_samples=None, mode='tensor'):
        x = self.proj(inputs)
        for block in self.blocks:
            x = x + block(x)
        if mode == 'loss':
            self.train_g.append(self.prepbn_g())
            return dict(loss=(self.head(x) ** 2).mean())
        if mode == 'predict':
            self.val_g.append(self.prepbn_g())
            return [dict(score=float(s)) for s in self.head(x).mean(dim=(1, 2))]
        return x


class ToyMetric(BaseMetric):
    """Mean of the toy model's scores (validation only needs some metric)."""

    def process(self, data_batch, data_samples):
        self.results.extend(d['score'] for d in data_samples)

    def compute_metrics(self, results):
        return dict(score=sum(results) / len(results))


def toy_runner(work_dir, hooks, model=None, max_iters=8, max_epochs=None, val_interval=None, batch_size=2,
               num_samples=8, accumulative_counts=1, checkpoint_interval=None, load_from=None, resume=False,
               log_level='INFO'):
    """An mmengine Runner training `model` (default ToyTokenModel()) on ToyTokenDataset with SGD.

    Iteration based for `max_iters` unless `max_epochs` is given. Validation every
    `val_interval` iterations/epochs (None: no validation). Logs every iteration
    (text log and LocalVisBackend scalars). Each Runner gets its own experiment name,
    so several can live in one process.
    """
    from mmengine.runner import Runner
    by_epoch = max_epochs is not None
    if by_epoch:
        train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=val_interval or 10**9)
    else:
        train_cfg = dict(by_epoch=False, max_iters=max_iters, val_interval=val_interval or 10**9)
    # An iteration-based loop restarts a finite sampler with a 2 s pause; InfiniteSampler has none.
    sampler = dict(type='DefaultSampler' if by_epoch else 'InfiniteSampler', shuffle=False)
    loader = dict(dataset=ToyTokenDataset(num_samples), sampler=sampler,
                  batch_size=batch_size, num_workers=0, collate_fn=dict(type='default_collate'))
    val_loader = dict(loader, sampler=dict(type='DefaultSampler', shuffle=False))
    val = dict(val_dataloader=val_loader, val_cfg=dict(), val_evaluator=[ToyMetric()]) if val_interval else {}
    name = f'toy_{uuid.uuid4().hex[:12]}'
    return Runner(
        model=model if model is not None else ToyTokenModel(),
        work_dir=str(work_dir),
        experiment_name=name,
        train_dataloader=loader,
        train_cfg=train_cfg,
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05), accumulative_counts=accumulative_counts),
        custom_hooks=list(hooks),
        default_hooks=dict(
            logger=dict(type='LoggerHook', interval=1),
            checkpoint=dict(type='CheckpointHook', interval=checkpoint_interval or 10**9, by_epoch=by_epoch)),
        log_processor=dict(window_size=1, by_epoch=by_epoch),
        visualizer=dict(type='Visualizer', vis_backends=[dict(type='LocalVisBackend')]),
        log_level=log_level,
        default_scope='mmengine',
        randomness=dict(seed=0),
        load_from=load_from,
        resume=resume,
        **val)


def runner_log_text(runner):
    """The text of a Runner's log file."""
    with open(os.path.join(runner.log_dir, f'{runner.timestamp}.log')) as f:
        return f.read()
def light_two_stage(cfg, proposals=100, rois=64, detections=20):
    """Make a two-stage detector config (Mask R-CNN) cheap on a CPU: fewer RPN proposals,
    fewer sampled RoIs in training, fewer detections at test time. Same code paths.

    The detection score threshold becomes 0: a model trained for a few iterations scores
    (nearly) everything as background, and with no detection at all CocoMetric reports
    no metrics. Keeping the `detections` best boxes makes evaluation always run.
    """
    model = cfg.model
    model.train_cfg.rpn_proposal.update(nms_pre=proposals * 2, max_per_img=proposals)
    model.train_cfg.rcnn.sampler.num = rois
    model.test_cfg.rpn.update(nms_pre=proposals * 2, max_per_img=proposals)
    model.test_cfg.rcnn.update(max_per_img=detections, score_thr=0.0)
    return cfg


def anneal_and_randomise_norms(model, seed=0):
    """Set every PRepBN to g = 0 and give every RepBN non-trivial statistics, affine and
    alpha, so that fusing it is a real test (a fresh BN is nearly the identity)."""
    import torch
    from slab_mmdet.models.layers import PRepBN, RepBN
    gen = torch.Generator().manual_seed(seed)

    def rand(t, lo, hi):
        return torch.rand(t.shape, generator=gen, dtype=t.dtype) * (hi - lo) + lo

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, PRepBN):
                m.set_g(0.0)
            elif isinstance(m, RepBN):
                m.alpha.copy_(rand(m.alpha, 0.5, 1.5))
                m.bn.running_mean.copy_(rand(m.bn.running_mean, -0.5, 0.5))
                m.bn.running_var.copy_(rand(m.bn.running_var, 0.5, 2.0))
                m.bn.weight.copy_(rand(m.bn.weight, 0.7, 1.3))
                m.bn.bias.copy_(rand(m.bn.bias, -0.2, 0.2))
    return model


def annealed_mask_rcnn(config, seed=0):
    """The Mask R-CNN of ``config`` (a path under the repo) on the CPU in eval mode, with
    mmdet's initialisation and every PRepBN at g = 0 with random norm parameters
    (:func:`anneal_and_randomise_norms`): ready to fuse."""
    import torch
    from mmdet.apis import init_detector
    torch.manual_seed(seed)
    model = init_detector(Config.fromfile(osp.join(REPO_ROOT, config)), None, device='cpu')
    model.init_weights()
    return anneal_and_randomise_norms(model, seed).eval()


def float64_detection_ops():
    """A context that lets an mmdet two-stage detector run in float64 on the CPU:
    mmcv's NMS (float32 only) is replaced by torchvision's, and masks are pasted in
    float32. Exact comparisons of detections are then possible."""
    import contextlib
    import sys as _sys

    import torch
    import torchvision
    import mmdet.models.roi_heads.mask_heads.fcn_mask_head as fcn_mask_head

    def nms(boxes, scores, iou_threshold, offset=0, score_threshold=0, max_num=-1):
        keep = torchvision.ops.nms(boxes, scores, iou_threshold)
        keep = keep[:max_num] if max_num > 0 else keep
        return torch.cat([boxes[keep], scores[keep, None]], 1), keep

    paste = fcn_mask_head._do_paste_mask

    @contextlib.contextmanager
    def ctx():
        mmcv_nms = _sys.modules['mmcv.ops.nms']
        old_nms = mmcv_nms.nms
        mmcv_nms.nms = nms
        fcn_mask_head._do_paste_mask = lambda masks, boxes, h, w, skip_empty=True: paste(
            masks.float(), boxes.float(), h, w, skip_empty)
        try:
            yield
        finally:
            mmcv_nms.nms = old_nms
            fcn_mask_head._do_paste_mask = paste
    return ctx()
