"""Shared test helpers (importable as ``testing_utils``: pyproject's pytest pythonpath holds tests/)."""
import os.path as osp

TESTS_DIR = osp.dirname(osp.dirname(osp.abspath(__file__)))
REPO_ROOT = osp.dirname(TESTS_DIR)
TEST_DATA_DIR = osp.join(TESTS_DIR, 'data')
