"""Train a detector from an mmdet config, with slab-mmdet's modules registered.

The counterpart of mmdet's ``tools/train.py`` (same arguments), and what
``mim train slab_mmdet CONFIG`` runs. It imports ``slab_mmdet``, so configs can use
its backbones, norms, hooks and datasets even without ``custom_imports``.

Examples:
    python tools/train.py configs/mini/mask_rcnn_pvt_t.py --work-dir work_dirs/pvt_t
    python tools/train.py configs/mini/mask_rcnn_pvt_t.py --resume          # latest in work dir
    python tools/train.py configs/mini/mask_rcnn_pvt_t.py --cfg-options train_cfg.max_epochs=2
    mim train slab_mmdet configs/mini/mask_rcnn_pvt_t.py --work-dir work_dirs/pvt_t
"""
import argparse
import os.path as osp

from run_args import add_run_arguments, parse_run_arguments


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision: fp16 with dynamic loss scaling on a GPU (AmpOptimWrapper), '
                             'bf16 on a machine without one (CPUAmpOptimWrapper)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate by total batch size / auto_scale_lr.base_batch_size')
    parser.add_argument('--resume', nargs='?', const='auto', metavar='CKPT',
                        help='resume from CKPT, or without CKPT from the latest checkpoint in the work dir')
    add_run_arguments(parser, 'train_cfg.max_epochs=2 optim_wrapper.optimizer.lr=1e-4')
    args = parse_run_arguments(parser, argv)
    if args.resume not in (None, 'auto') and not osp.isfile(args.resume) and '://' not in args.resume:
        parser.error(f'--resume checkpoint not found: {args.resume} '
                     '(give an existing file, or --resume alone for the latest in the work dir)')
    return args


def main(argv=None):
    args = parse_args(argv)
    # Imported after parsing, so that -h (which mim runs first) and bad arguments answer fast.
    from mmdet.utils import setup_cache_size_limit_of_dynamo

    import slab_mmdet  # noqa: F401  (registers slab-mmdet's modules)
    from slab_mmdet.engine import amp_optim_wrapper_type
    from slab_mmdet.engine.run_config import build_runner, load_run_config

    setup_cache_size_limit_of_dynamo()
    cfg = load_run_config(args.config, args.cfg_options, args.work_dir, args.launcher)

    if args.amp:
        wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if wrapper not in ('OptimWrapper', 'AmpOptimWrapper', 'CPUAmpOptimWrapper'):
            raise SystemExit(f'--amp: {args.config} uses optim_wrapper type {wrapper!r}; --amp replaces an '
                             'OptimWrapper by AmpOptimWrapper (CPUAmpOptimWrapper without a GPU): set the AMP '
                             'wrapper in the config instead')
        cfg.optim_wrapper.type = amp_optim_wrapper_type()
        cfg.optim_wrapper.loss_scale = 'dynamic'
        print(f'[train] --amp: {cfg.optim_wrapper.type}'
              + (' (bf16 autocast on the CPU, no loss scaling)' if cfg.optim_wrapper.type.startswith('CPU') else ''))
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise SystemExit(f'--auto-scale-lr: {args.config} has no auto_scale_lr.base_batch_size; add '
                             'auto_scale_lr = dict(enable=False, base_batch_size=<batch size the lr is for>)')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        from mmengine.runner import find_latest_checkpoint
        if find_latest_checkpoint(cfg.work_dir) is None:
            # mmengine would log "resumed from None" and start anyway; say what happens instead.
            print(f'[train] --resume: nothing to resume in {cfg.work_dir} (no checkpoint written there yet); '
                  f'starting from the config\'s weights')
        else:
            cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume

    try:
        build_runner(cfg).train()
    except ValueError as e:   # slab-mmdet's refusals (a load_from that does not fit, a bad hook argument)
        raise SystemExit(f'error: {e}')


if __name__ == '__main__':
    main()
