import os

import pytest
import torch
from mmengine.registry import DefaultScope

from testing_utils import REPO_ROOT

# The suite runs on a 2-core machine: keep torch from oversubscribing it. An explicit
# OMP_NUM_THREADS wins (torch reads it itself): on a shared machine, 2 threads that
# wait for each other can make a Runner test several times slower than 1 thread.
if 'OMP_NUM_THREADS' not in os.environ:
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def mmdet_default_scope():
    """Every test starts in mmdet's registry scope and leaves no scope behind (a Runner
    makes its own scope current), so that no test depends on the ones before it."""
    with DefaultScope.overwrite_default_scope('mmdet'):
        yield


@pytest.fixture(autouse=True)
def recorded_mallopt(monkeypatch):
    """The benchmark's allocator switch talks to a recorder, not to glibc: ``'reuse'`` cannot be undone
    within a process, and the suite shares one. Each test starts in mode ``'system'``; the calls the
    switch made are the returned list of (param, value). tests/test_benchmark/test_allocator.py
    checks the real switch in child processes."""
    from slab_mmdet.benchmark import allocator
    calls = []
    monkeypatch.setattr(allocator, '_mode', 'system')
    monkeypatch.setattr(allocator, '_mallopt', lambda: lambda param, value: calls.append((param, value)) or 1)
    return calls


@pytest.fixture(scope='session')
def repo_root():
    return REPO_ROOT


@pytest.fixture(scope='session')
def mini_coco(tmp_path_factory):
    """A small mini COCO (8 train / 4 val images) shared by the whole session."""
    from slab_mmdet.datasets import ensure_mini_coco
    root = str(tmp_path_factory.mktemp('mini_coco'))
    ensure_mini_coco(root, num_train=8, num_val=4, seed=0, log=None)
    return root


@pytest.fixture
def one_torch_thread():
    """Run the test on one torch thread (tiny models are faster so on the shared 2-core
    machine); a module opts in with ``pytestmark = pytest.mark.usefixtures('one_torch_thread')``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture
def quiet_mmengine_logger():
    """mmengine's current logger at ERROR for the test (its INFO lines about loading and building
    flood the output); a module opts in with ``pytest.mark.usefixtures('quiet_mmengine_logger')``."""
    import logging

    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@pytest.fixture(scope='session')
def slab_pvt_t_features_onnx(tmp_path_factory):
    """A fused mini SLAB-PVT-T's backbone + neck as an ONNX graph (traced at 256x320), shared
    by the int8 tests of the library and of tools/quantize_onnx.py."""
    from slab_mmdet.deploy import fuse_detector
    from slab_mmdet.deploy.onnx_export import export_onnx
    from testing_utils.helpers import annealed_mask_rcnn
    model = annealed_mask_rcnn('configs/mini/mask_rcnn_slab_pvt_t.py')
    fuse_detector(model)
    path = str(tmp_path_factory.mktemp('features_onnx') / 'features.onnx')
    export_onnx(model, path, input_hw=(256, 320), logger=lambda *a: None)
    return path
