"""Shared by the latency benchmark's tests: a small Mask R-CNN config and options, the CLI
loaded as a module, and a fake clock that only the code under test advances."""
import os.path as osp

from .helpers import load_script

MASK_RCNN = 'configs/mini/mask_rcnn_pvt_t.py'
# Small images and few proposals/detections, so that a Mask R-CNN forward takes ~0.1 s on a CPU.
SMALL_MASK_RCNN_OPTIONS = ['test_dataloader.dataset.pipeline.1.scale=(128,96)', 'model.test_cfg.rpn.nms_pre=100',
                           'model.test_cfg.rpn.max_per_img=20', 'model.test_cfg.rcnn.max_per_img=5']
SMALL_TEST_PIPELINE = """[
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 96), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]"""


def load_benchmark_cli():
    """tools/benchmark_latency.py as a module."""
    return load_script('tools/benchmark_latency.py', 'benchmark_latency')


def write_small_config(directory, name, base, model):
    """A config inheriting `base`, with `model` overrides and a small-image test pipeline."""
    path = osp.join(directory, name + '.py')
    with open(path, 'w') as f:
        f.write(f'_base_ = {base!r}\nmodel = {model!r}\n'
                f'test_dataloader = dict(dataset=dict(pipeline={SMALL_TEST_PIPELINE}))\n')
    return path

class FakeClock:
    """A clock that only moves when told to: measured times are exactly what was advanced inside."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds

def advance_on_call(module, method, clock, seconds):
    """Make `module.method` advance `clock` by `seconds` on each call (an instance attribute)."""
    original = getattr(module, method)

    def slow(*args, **kwargs):
        clock.advance(seconds)
        return original(*args, **kwargs)
    setattr(module, method, slow)
