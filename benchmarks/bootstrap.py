"""Imported first by every script in benchmarks/ (its folder is sys.path[0] when one runs): the
checkout's root as REPO, and that root importable, so that the scripts import slab_mmdet from
this checkout whatever the environment has installed."""
import os.path as osp
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
