"""Shared helpers for tests: configs shrunk to run in seconds on a CPU."""
import os
import os.path as osp
import subprocess
import sys

from mmengine.config import Config

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


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


def run_python(args, cwd=REPO_ROOT, timeout=600, env=None):
    """Run `python args...` with this checkout first on sys.path; returns CompletedProcess."""
    full_env = dict(os.environ)
    full_env['PYTHONPATH'] = REPO_ROOT + os.pathsep + full_env.get('PYTHONPATH', '')
    full_env.setdefault('OMP_NUM_THREADS', '2')
    full_env.update(env or {})
    return subprocess.run([sys.executable] + list(args), cwd=cwd, env=full_env, timeout=timeout,
                          capture_output=True, text=True)


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
