"""Command-line arguments shared by tools/train.py and tools/test.py (mmdet's conventions).

Kept free of heavy imports, so that ``-h`` (which mim runs first) and argument errors
answer at once.
"""
import argparse
import os

from mmengine.config import DictAction

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')


def add_run_arguments(parser, example_option):
    """--work-dir, --cfg-options, --launcher and the launcher's hidden --local_rank."""
    parser.add_argument('--work-dir', help='directory for logs, metrics and checkpoints '
                        '(default: the config\'s work_dir, else ./work_dirs/<config name>)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help=f'override config settings, e.g. {example_option} (lists: key="[a,b]", no spaces)')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none', help='job launcher')
    # torch.distributed launchers pass --local-rank (torch >= 2.0) or --local_rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)


def parse_run_arguments(parser, argv=None):
    """Parse, check the config exists (a path or a package config such as
    ``mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py``), and export LOCAL_RANK as the launchers expect."""
    args = parser.parse_args(argv)
    from slab_mmdet.apis.config import resolve_config_path   # after parsing: -h answers without torch
    try:
        resolve_config_path(args.config)
    except FileNotFoundError:
        parser.error(f'config file not found: {args.config} (give a config file path, or a package config such as '
                     f'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py)')
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args
