import os
import os.path as osp
import sys

import pytest

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(REPO_ROOT, 'tests'))

import torch  # noqa: E402

# The suite runs on a 2-core machine: keep torch from oversubscribing it. An explicit
# OMP_NUM_THREADS wins (torch reads it itself): on a shared machine, 2 threads that
# wait for each other can make a Runner test several times slower than 1 thread.
if 'OMP_NUM_THREADS' not in os.environ:
    torch.set_num_threads(min(2, os.cpu_count() or 1))


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
