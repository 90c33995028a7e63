"""Imported first by every script in benchmarks/ (its folder is sys.path[0] when one runs): the
checkout's root as REPO, and that root importable, so that the scripts import slab_mmdet from
this checkout whatever the environment has installed; and the command line a record states."""
import os.path as osp
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def command_line(script, argv=None):
    """How a record names the run: 'python benchmarks/<script> ARGS', ``argv`` (default: this
    process's arguments) for ARGS; ``script`` is the script's ``__file__``."""
    return 'python ' + ' '.join([osp.relpath(osp.abspath(script), REPO)] + (argv if argv is not None else sys.argv[1:]))
