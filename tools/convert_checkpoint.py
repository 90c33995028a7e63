"""Convert a released PVT / Swin checkpoint into the weights of a SLAB backbone.

Sources (detected from the keys, or forced with --family):
  reference  the SLAB authors' ImageNet checkpoints (slab_pvt_tiny/small/medium,
             pvt_{tiny,small,medium}_prepbn, slab_swin_tiny/small, swin_tiny_prepbn):
             PRepBN g = iter / total_step of each reference norm, head dropped.
  mmdet      mmdet's LayerNorm PyramidVisionTransformer (v1) / SwinTransformer, as a
             backbone state dict or a whole detector checkpoint: each LayerNorm becomes
             the LayerNorm branch of a PRepBN (g = 1, fresh RepBN with alpha 0), so fine-tuning can
             anneal it to BatchNorm. A detector keeps its neck and heads (use load_from).

The checkpoint is loaded with torch.load(weights_only=True); objects of classes that
are not allow-listed (e.g. the yacs training config) are read as inert data, no code
from the file runs. DST holds {'state_dict': ..., 'meta': {...}}. The tool prints the
backbone config to paste into an mmdet config, and a summary (PRepBN count, g range,
dropped and unmapped keys).

Example:
    python tools/convert_checkpoint.py slab_swin_tiny.pth checkpoints/slab_swin_tiny_mmdet.pth
"""
import argparse
import sys

from mmdet.registry import MODELS

import slab_mmdet  # noqa: F401  (registers the backbones)
from slab_mmdet.converters import FAMILIES, ConversionError, convert_checkpoint
from slab_mmdet.converters.rules import py_repr


def stage_channels(backbone_cfg):
    """The output channels of each stage of the backbone ``backbone_cfg`` describes."""
    return MODELS.get(backbone_cfg['type']).stage_channels(backbone_cfg['arch'])


def config_snippet(report, checkpoint):
    """mmdet config lines for the converted checkpoint: the backbone (with
    ``init_cfg`` to load it) and the neck's ``in_channels``; ``load_from`` for a detector."""
    cfg = dict(report.backbone_cfg)
    if not report.detector:
        cfg['init_cfg'] = dict(type='Pretrained', checkpoint=checkpoint)
    fields = ',\n'.join(f'        {k}={py_repr(v)}' for k, v in cfg.items())
    lines = ['model = dict(', '    backbone=dict(', fields + '),',
             f'    neck=dict(in_channels={py_repr(stage_channels(cfg))}))']
    if report.detector:
        lines.append(f'load_from = {checkpoint!r}')
    return '\n'.join(lines)


def parse_num_heads(text):
    try:
        heads = tuple(int(h) for h in text.split(','))
    except ValueError:
        heads = ()
    if not heads or any(h < 1 for h in heads):
        raise argparse.ArgumentTypeError(f'expected comma-separated positive integers such as 1,2,5,8, got {text!r}')
    return heads


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', metavar='SRC', help='checkpoint to convert (.pth written by torch.save)')
    parser.add_argument('dst', metavar='DST', help='where to write the converted checkpoint')
    parser.add_argument('--family', choices=FAMILIES, default='auto',
                        help='source layout: auto (detect, default), reference (SLAB authors), mmdet')
    parser.add_argument('--num-heads', type=parse_num_heads, default=None, metavar='H0,H1,...',
                        help='attention heads per stage, for PVT checkpoints with softmax stages, which do not '
                             'store them (default: 1,2,5,8, as every released PVT)')
    parser.add_argument('--force', action='store_true', help='overwrite DST if it exists')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        report = convert_checkpoint(args.src, args.dst, family=args.family, num_heads=args.num_heads,
                                    force=args.force)
    except (ConversionError, OSError) as e:   # OSError: missing SRC, existing DST, unwritable DST
        raise SystemExit(f'error: {e}')
    print('\nPaste into your mmdet config:\n')
    print(config_snippet(report, args.dst))
    print('\nSummary:')
    print(report.summary())
    return 0


if __name__ == '__main__':
    sys.exit(main())
