"""Prove that the installed stack works: versions import and mmcv's compiled ops run.

Exits non-zero, naming the cause, when something is missing.
"""
import sys
import warnings


def fail(msg):
    print(f'[check_env] ERROR: {msg}', file=sys.stderr)
    sys.exit(1)


def main():
    try:
        import torch
    except ImportError as e:
        fail(f'torch does not import: {e}')
    try:
        import torchvision  # noqa: F401
    except Exception as e:  # the +cpu torch makes torchvision's C++ ops fail to register
        fail(f'torchvision does not import ({e}). torch {torch.__version__} probably does not match '
             'the torchvision wheel: install the upstream torch build with `torch===<version>`.')
    try:
        with warnings.catch_warnings():  # its deprecation notice is expected with setuptools < 81
            warnings.simplefilter('ignore')
            import pkg_resources  # noqa: F401  (mmcv's setup.py and mim need it)
    except ImportError:
        fail('setuptools has no pkg_resources (setuptools >= 81?); install setuptools<81')
    import mmcv
    try:
        from mmcv import _ext  # noqa: F401
    except ImportError as e:
        fail(f'mmcv {mmcv.__version__} was built without its C++ ops ({e}). Rebuild it with '
             '`pip install --no-build-isolation mmcv==<version>` after torch is installed '
             '(an isolated build does not see torch and silently skips the ops).')
    from mmcv.ops import nms, roi_align
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [50., 50., 60., 60.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    _, keep = nms(boxes, scores, iou_threshold=0.5)
    if keep.tolist() != [0, 2]:
        fail(f'mmcv.ops.nms returned {keep.tolist()}, expected [0, 2]')
    feat = torch.arange(16.).view(1, 1, 4, 4)
    out = roi_align(feat, torch.tensor([[0., 0., 0., 3., 3.]]), (1, 1), 1.0, 0, 'avg', True)
    if not torch.isfinite(out).all():
        fail('mmcv.ops.roi_align returned non-finite values')
    import mmdet
    import mmengine
    import slab_mmdet
    print(f'[check_env] ok: torch {torch.__version__}, torchvision {torchvision.__version__}, '
          f'mmcv {mmcv.__version__} (ops compiled), mmengine {mmengine.__version__}, '
          f'mmdet {mmdet.__version__}, slab_mmdet {slab_mmdet.__version__}')


if __name__ == '__main__':
    main()
