"""`mim train` / `mim test` with mmdet's tools and with ours (tools/train.py, tools/test.py).

The training runs use a child config, written to tmp, that inherits
configs/mini/mask_rcnn_pvt_t.py and points it at the session's mini COCO with small
images, few proposals and an iteration-based schedule; `--cfg-options` then sets the
iteration count, so the tests also see that overrides reach the run.
"""
import json
import math
import os
import os.path as osp
import pickle
import pprint
import re

import pytest
import torch
from mmengine.config import Config

import slab_mmdet  # noqa: F401  (checkpoints load with weights_only=True)
from testing_utils.helpers import REPO_ROOT, light_two_stage, mini_config, run_python

CONFIG = 'configs/mini/mask_rcnn_pvt_t.py'
CHILD_MAX_ITERS = 4   # what the child config says; the command lines ask for fewer
# The top-level keys mini_config / light_two_stage change; the child replaces them whole.
CHILD_KEYS = ('model', 'train_dataloader', 'val_dataloader', 'test_dataloader', 'val_evaluator',
              'test_evaluator', 'train_cfg', 'param_scheduler', 'default_hooks', 'log_processor', 'randomness')
TRAIN_LINE = re.compile(r'Iter\(train\) \[\s*(\d+)/(\d+)\].*?\bloss: ([0-9.]+)')


def write_child_config(path, data_root):
    cfg = light_two_stage(mini_config(CONFIG, data_root, work_dir='unused', max_iters=CHILD_MAX_ITERS,
                                      img_scale=(160, 120), val=False))
    cfg.randomness = dict(seed=0)
    plain = cfg.to_dict()
    base = Config.fromfile(osp.join(REPO_ROOT, CONFIG))
    lines = [f'_base_ = {osp.join(REPO_ROOT, CONFIG)!r}', '']
    for key in CHILD_KEYS:
        value = plain[key]
        if isinstance(value, dict) and key in base:   # replace the base's dict, don't merge into it
            value = dict(_delete_=True, **value)
        lines.append(f'{key} = {pprint.pformat(value, sort_dicts=False)}')
    path.write_text('\n'.join(lines) + '\n')
    return str(path)


def mim_pythonpath(tmp_path):
    """PYTHONPATH under which mim's `slab_mmdet` is this checkout.

    mim finds a package's tools through its installed distribution
    (<location>/slab_mmdet/.mim/tools). The cached venv is shared by clones and its
    editable install may point at another one; then a stand-in distribution in tmp,
    laid out as `make setup` lays out an editable install, puts this checkout first.
    """
    code = 'from mim.utils import get_installed_path; print(get_installed_path("slab_mmdet"))'
    proc = run_python(['-I', '-W', 'ignore', '-c', code])
    assert proc.returncode == 0, proc.stderr
    installed = proc.stdout.strip().splitlines()[-1]
    if osp.dirname(osp.realpath(installed)) == osp.realpath(REPO_ROOT):
        return REPO_ROOT
    from slab_mmdet import __version__
    site = tmp_path / 'site'
    dist_info = site / f'slab_mmdet-{__version__}.dist-info'
    dist_info.mkdir(parents=True)
    (dist_info / 'METADATA').write_text(f'Metadata-Version: 2.1\nName: slab_mmdet\nVersion: {__version__}\n')
    mim_dir = site / 'slab_mmdet' / '.mim'   # no __init__.py: `import slab_mmdet` still finds the checkout's
    mim_dir.mkdir(parents=True)
    for name in ('configs', 'tools'):
        os.symlink(osp.join(REPO_ROOT, name), mim_dir / name)
    return os.pathsep.join([str(site), REPO_ROOT])


def mim(*args, pythonpath, timeout=300):
    """Run the venv's mim; returns its output (stdout + stderr)."""
    proc = run_python(['-m', 'mim', *args], env=dict(PYTHONPATH=pythonpath), timeout=timeout)
    assert proc.returncode == 0, f'mim {" ".join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}'
    return proc.stdout + proc.stderr


def train_log_lines(work_dir):
    """[(iteration, max iterations, loss)] from the training logs in work_dir (oldest run first)."""
    logs = sorted(osp.join(work_dir, d, f'{d}.log') for d in os.listdir(work_dir)
                  if osp.isfile(osp.join(work_dir, d, f'{d}.log')))
    assert logs, f'no log in {work_dir}'
    out = []
    for log in logs:
        with open(log) as f:
            out += [(int(m[1]), int(m[2]), float(m[3])) for m in map(TRAIN_LINE.search, f) if m]
    return out


def coco_metric(output, name):
    values = re.findall(rf'coco/{name}: (-?[0-9.]+)', output)
    assert values, f'no coco/{name} in the output:\n{output[-3000:]}'
    return float(values[-1])


@pytest.fixture(scope='module')
def mim_run(mini_coco, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('mim')
    config = write_child_config(tmp / 'child_config.py', mini_coco)
    # Without custom_imports, only an entry point that imports slab_mmdet itself finds
    # MiniCocoDataset (--cfg-options cannot remove it: the config imports it while loading).
    (tmp / 'no_imports.py').write_text(
        f'_base_ = {config!r}\n'
        'custom_imports = dict(_delete_=True, imports=[], allow_failed_imports=False)\n')
    return dict(config=config, config_no_imports=str(tmp / 'no_imports.py'),
                pythonpath=mim_pythonpath(tmp), work_dir=str(tmp / 'work'), tmp=tmp, data_root=mini_coco)


@pytest.mark.slow
def test_mim_train_mmdet_then_resume_with_ours_then_test(mim_run):
    cfg, pythonpath, work_dir = mim_run['config'], mim_run['pythonpath'], mim_run['work_dir']
    # mmdet's own tools need the config's custom_imports to find MiniCocoDataset.
    proc = run_python(['-m', 'mim', 'train', 'mmdet', mim_run['config_no_imports'], '--work-dir',
                       osp.join(mim_run['tmp'], 'fails')], env=dict(PYTHONPATH=pythonpath), timeout=300)
    assert proc.returncode != 0 and 'MiniCocoDataset is not in the' in proc.stdout + proc.stderr

    # 1. mmdet's tools/train.py, through mim: 2 iterations (the child config says 4).
    out = mim('train', 'mmdet', cfg, '--work-dir', work_dir, '--cfg-options', 'train_cfg.max_iters=2',
              pythonpath=pythonpath)
    assert re.search(r'mmdet/\.mim/tools/train\.py', out)
    assert osp.isfile(osp.join(work_dir, 'iter_2.pth'))
    lines = train_log_lines(work_dir)
    assert [(i, n) for i, n, _ in lines] == [(1, 2), (2, 2)]
    assert all(math.isfinite(loss) and loss > 0 for _, _, loss in lines)

    # 2. Our tools/train.py, through `mim train slab_mmdet`: resume the run above (its
    # checkpoint loads with weights_only=True) for one more iteration, from a config
    # without custom_imports: our entry point registers slab-mmdet's modules itself.
    out = mim('train', 'slab_mmdet', mim_run['config_no_imports'], '--work-dir', work_dir, '--resume',
              '--cfg-options', 'train_cfg.max_iters=3', pythonpath=pythonpath)
    assert re.search(r'slab_mmdet/\.mim/tools/train\.py', out)
    assert f'Auto resumed from the latest checkpoint {osp.join(work_dir, "iter_2.pth")}' in out
    assert re.search(r'resumed epoch: \d+, iter: 2\b', out)
    assert osp.isfile(osp.join(work_dir, 'iter_3.pth'))
    lines = train_log_lines(work_dir)
    assert [(i, n) for i, n, _ in lines] == [(1, 2), (2, 2), (3, 3)]
    ckpt = torch.load(osp.join(work_dir, 'iter_3.pth'), map_location='cpu')
    assert ckpt['meta']['iter'] == 3
    assert len(ckpt['message_hub']['log_scalars']['train/loss'].data[0]) == 3   # history carried over

    # 3. mmdet's tools/test.py evaluates that checkpoint.
    out = mim('test', 'mmdet', cfg, '--checkpoint', osp.join(work_dir, 'iter_3.pth'),
              '--work-dir', osp.join(mim_run['tmp'], 'test_mmdet'), pythonpath=pythonpath)
    for name in ('bbox_mAP', 'segm_mAP'):
        assert 0.0 <= coco_metric(out, name) <= 1.0

    # 4. Ours, through `mim test slab_mmdet` (no custom_imports), also dumping the predictions
    # and drawing them.
    preds, test_dir = osp.join(mim_run['tmp'], 'preds.pkl'), osp.join(mim_run['tmp'], 'test_ours')
    out = mim('test', 'slab_mmdet', mim_run['config_no_imports'], '--checkpoint',
              osp.join(work_dir, 'iter_3.pth'), '--work-dir', test_dir, '--out', preds, '--show-dir', 'vis',
              pythonpath=pythonpath)
    assert re.search(r'slab_mmdet/(\.mim/)?tools/test\.py', out)
    assert 0.0 <= coco_metric(out, 'bbox_mAP') <= 1.0
    with open(preds, 'rb') as f:
        results = pickle.load(f)
    with open(osp.join(mim_run['data_root'], 'annotations', 'instances_val.json')) as f:
        val_images = json.load(f)['images']
    assert len(results) == len(val_images)
    assert {'pred_instances', 'img_id'} <= set(results[0])
    drawn = [f for _, _, files in os.walk(test_dir) for f in files if f.endswith('.jpg')]
    assert sorted(drawn) == sorted(img['file_name'] for img in val_images)


# ---------------------------------------------------------------------------- argument errors

@pytest.mark.parametrize('args, message', [
    (['tools/train.py', 'no/such/config.py'], 'config file not found: no/such/config.py'),
    # A package config passes the check: the next argument error is the one reported.
    (['tools/train.py', 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', '--resume', 'no_such.pth'],
     '--resume checkpoint not found: no_such.pth'),
    (['tools/train.py', CONFIG, '--resume', 'no_such.pth'], '--resume checkpoint not found: no_such.pth'),
    (['tools/train.py', CONFIG, '--launcher', 'local'], "invalid choice: 'local'"),
    (['tools/test.py', CONFIG, 'no_such.pth'], 'checkpoint not found: no_such.pth'),
    (['tools/test.py', CONFIG, __file__, '--out', 'preds.json'],
     '--out must be a .pkl or .pickle file, got preds.json'),
])
def test_entry_points_reject_bad_arguments(args, message):
    proc = run_python(args, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr


@pytest.mark.slow
def test_resume_with_nothing_to_resume_says_so_and_starts(mim_run, tmp_path):
    work_dir = str(tmp_path / 'fresh')
    proc = run_python(['tools/train.py', mim_run['config'], '--work-dir', work_dir, '--resume', '--cfg-options',
                       'train_cfg.max_iters=1'], timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (f'[train] --resume: nothing to resume in {work_dir} (no checkpoint written there yet); starting from '
            "the config's weights") in proc.stdout
    assert 'resumed from None' not in proc.stdout + proc.stderr
    assert osp.isfile(osp.join(work_dir, 'iter_1.pth'))


def test_train_help_does_not_offer_gpus():
    """mim adds `--gpus N` / `--device cpu` to the command when the help mentions --gpus;
    our train.py takes neither (the launcher decides the devices)."""
    proc = run_python(['tools/train.py', '-h'], timeout=120)
    assert proc.returncode == 0
    assert '--gpus' not in proc.stdout
    for flag in ('--work-dir', '--amp', '--auto-scale-lr', '--resume', '--cfg-options', '--launcher'):
        assert flag in proc.stdout


def test_auto_scale_lr_needs_base_batch_size(tmp_path):
    cfg = tmp_path / 'no_auto_scale.py'
    cfg.write_text(f'_base_ = {osp.join(REPO_ROOT, CONFIG)!r}\n'
                   'auto_scale_lr = dict(_delete_=True, enable=False)\n')
    proc = run_python(['tools/train.py', str(cfg), '--auto-scale-lr', '--work-dir', str(tmp_path / 'w')],
                      timeout=300)
    assert proc.returncode != 0
    assert 'auto_scale_lr.base_batch_size' in proc.stderr


# ------------------------------------------------------- the README's commands, COCO config

def one_image_subset(src_json, dst_json):
    """The first image of a COCO json with its annotations (a one-iteration epoch)."""
    with open(src_json) as f:
        data = json.load(f)
    data['images'] = data['images'][:1]
    data['annotations'] = [a for a in data['annotations'] if a['image_id'] == data['images'][0]['id']]
    with open(dst_json, 'w') as f:
        json.dump(data, f)
    return str(dst_json), data['images'][0]['file_name']


@pytest.mark.slow
def test_readme_mim_commands_on_the_coco_config(mini_coco, tmp_path):
    """README: `mim train mmdet|slab_mmdet configs/mask_rcnn_slab_pvt_s.py`, tools/fuse_norms.py,
    then `mim test mmdet <deploy config> --checkpoint <fused>`, on the COCO config itself,
    pointed by --cfg-options at one mini COCO image at 320x256 (COCO is not here)."""
    config = 'configs/mask_rcnn_slab_pvt_s.py'
    pythonpath = mim_pythonpath(tmp_path)
    train_json, _ = one_image_subset(osp.join(mini_coco, 'annotations', 'instances_train.json'),
                                     tmp_path / 'train1.json')
    val_json, val_image = one_image_subset(osp.join(mini_coco, 'annotations', 'instances_val.json'),
                                           tmp_path / 'val1.json')

    def loader(split, ann_file, resize_index):
        return [f'{split}_dataloader.dataset.type=MiniCocoDataset', f'{split}_dataloader.dataset.data_root={mini_coco}',
                f'{split}_dataloader.dataset.ann_file={ann_file}',
                f'{split}_dataloader.dataset.data_prefix.img={"train" if split == "train" else "val"}/',
                f'{split}_dataloader.dataset.pipeline.{resize_index}.scale=(320,256)',
                f'{split}_dataloader.num_workers=0', f'{split}_dataloader.persistent_workers=False']

    # Mini COCO's 6 classes, as for any dataset of one's own; the last epoch validates. A
    # fixed seed: after one iteration from random weights the mask probabilities sit at the
    # 0.5 threshold, where float-level differences flip mask pixels, so an unseeded run
    # would pass or fail fuse_norms' check (detections within 1e-3) by chance.
    model_options = ['model.roi_head.bbox_head.num_classes=6', 'model.roi_head.mask_head.num_classes=6']
    train_options = [*model_options, 'randomness.seed=0', 'model.backbone.init_cfg=None',
                     'train_dataloader.batch_size=1', 'train_cfg.max_epochs=1', *loader('train', train_json, 2),
                     *loader('val', val_json, 1),
                     f'val_evaluator.ann_file={val_json}']
    test_options = [*model_options, *loader('test', val_json, 1), f'test_evaluator.ann_file={val_json}']
    for package in ('mmdet', 'slab_mmdet'):
        work_dir = str(tmp_path / package)
        out = mim('train', package, config, '--work-dir', work_dir, '--cfg-options', *train_options,
                  pythonpath=pythonpath)
        assert re.search(rf'{package}/\.mim/tools/train\.py', out)
        assert re.search(r'PRepBNHook: anneal complete, all \d+ PRepBN layers have g = 0', out)
        assert osp.isfile(osp.join(work_dir, 'epoch_1.pth'))

    # The README's deployment path, from the last run's checkpoint.
    deploy_dir = tmp_path / 'deploy'
    proc = run_python(['tools/fuse_norms.py', config, osp.join(work_dir, 'epoch_1.pth'), '--out-dir', str(deploy_dir),
                       '--image', osp.join(mini_coco, 'val', val_image), '--cfg-options', *test_options],
                      timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    deploy_cfg = deploy_dir / 'mask_rcnn_slab_pvt_s_deploy.py'
    fused = deploy_dir / 'epoch_1_fused.pth'
    assert deploy_cfg.is_file() and fused.is_file()
    out = mim('test', 'mmdet', str(deploy_cfg), '--checkpoint', str(fused), '--work-dir', str(tmp_path / 'test'),
              '--cfg-options', *test_options, pythonpath=pythonpath)
    assert re.search(r'mmdet/\.mim/tools/test\.py', out)
    for name in ('bbox_mAP', 'segm_mAP'):
        assert 0.0 <= coco_metric(out, name) <= 1.0
