"""Evaluate a checkpoint on a config's test set, with slab-mmdet's modules registered.

The counterpart of mmdet's ``tools/test.py``, and what
``mim test slab_mmdet CONFIG --checkpoint CKPT`` runs. It imports ``slab_mmdet``, so
configs can use its modules even without ``custom_imports``, and checkpoints
written by mmengine load with ``torch.load(weights_only=True)``.

Examples:
    python tools/test.py configs/mini/mask_rcnn_pvt_t.py work_dirs/pvt_t/epoch_12.pth
    python tools/test.py configs/mini/mask_rcnn_pvt_t.py CKPT --out results.pkl --show-dir vis
    mim test slab_mmdet configs/mini/mask_rcnn_pvt_t.py --checkpoint CKPT
"""
import argparse
import os.path as osp

from run_args import add_run_arguments, parse_run_arguments


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file (or URL)')
    parser.add_argument('--out', help='also dump the predictions to this .pkl file')
    parser.add_argument('--show-dir', help='save images with predictions drawn here '
                        '(relative paths are under <work dir>/<timestamp>/)')
    add_run_arguments(parser, 'test_dataloader.batch_size=2')
    args = parse_run_arguments(parser, argv)
    if not osp.isfile(args.checkpoint) and '://' not in args.checkpoint:
        parser.error(f'checkpoint not found: {args.checkpoint}')
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        parser.error(f'--out must be a .pkl or .pickle file, got {args.out}')
    return args


def main(argv=None):
    args = parse_args(argv)
    # Imported after parsing, so that -h and bad arguments answer fast.
    from mmdet.engine.hooks.utils import trigger_visualization_hook
    from mmdet.evaluation import DumpDetResults
    from mmdet.utils import setup_cache_size_limit_of_dynamo

    import slab_mmdet  # noqa: F401  (registers slab-mmdet's modules)
    from slab_mmdet.engine.run_config import build_runner, load_run_config

    setup_cache_size_limit_of_dynamo()
    cfg = load_run_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    cfg.load_from = args.checkpoint
    if args.show_dir:
        cfg = trigger_visualization_hook(cfg, argparse.Namespace(show=False, show_dir=args.show_dir))

    runner = build_runner(cfg)
    if args.out is not None:
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    try:
        runner.test()
    except ValueError as e:   # slab-mmdet's refusals (no checkpoint in the file, another architecture's)
        raise SystemExit(f'error: {e}')


if __name__ == '__main__':
    main()
