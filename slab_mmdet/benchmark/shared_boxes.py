"""One detector's boxes fed to every detector's heads, so that a comparison times the same head work.

A two-stage detector's head time depends on its boxes: the RoI head's NMS on the proposals,
the mask head's pasting on the detections' areas. With random weights every model finds other
boxes, and that difference moved whole-detector ratios by up to 0.24 between runs. Fed the
reference's boxes, every model still computes its own RPN and RoI predictions (their cost is
kept), then continues with the recorded proposals and detections.
"""
from contextlib import contextmanager

import torch

from .errors import BenchmarkError
from .measure import methods_replaced

# (module attribute of the detector, method whose result is replaced, what it returns)
FED_METHODS = (('rpn_head', 'predict', 'proposals'), ('roi_head', 'predict_bbox', 'detections'))


def check_two_stage(bench_model):
    """BenchmarkError unless the detector has the methods whose results are shared."""
    model = bench_model.model
    for attr, method, _ in FED_METHODS:
        if not callable(getattr(getattr(model, attr, None), method, None)):
            raise BenchmarkError(
                f'{bench_model.name}: a {type(model).__name__} has no {attr}.{method}; feeding one detector\'s '
                'boxes to the others needs two-stage detectors (RPN + RoI head, e.g. Mask R-CNN)')


def _fed_methods_replaced(model, make_wrapper):
    """FED_METHODS of `model` replaced by ``make_wrapper(what, method)`` within a ``with`` block."""
    return methods_replaced([(getattr(model, attr), method) for attr, method, _ in FED_METHODS],
                            lambda j, fn: make_wrapper(FED_METHODS[j][2], fn))


def _copied(instances):
    """A copy of an InstanceData whose tensors are copies too (its ``clone()`` shares them, and
    the mask head rescales the boxes it is given in place)."""
    copy = type(instances)(metainfo=instances.metainfo)
    for key, value in instances.items():
        setattr(copy, key, value.clone() if isinstance(value, torch.Tensor) else value)
    return copy


def _input_shape(what, batch):
    """The resized image's (H, W) from the second argument of a FED_METHODS method: the data
    samples (rpn_head.predict) or their metainfo dicts (roi_head.predict_bbox)."""
    meta = batch[0] if what == 'detections' else batch[0].metainfo
    return tuple(meta['img_shape'])


class SharedBoxes:
    """The reference detector's proposals and detections per image (``record``), and the
    context (``feeding``) in which another detector's heads return them instead of their own."""

    def __init__(self, models):
        for m in models:
            check_two_stage(m)
        self.reference = models[0].name
        self._boxes = {}   # image index -> (input image shape, {what: [InstanceData]})

    def record(self, bench_model, data, k):
        """Run `bench_model` on image `k`'s prepared `data` and keep what its heads returned."""
        caught = {}
        shape = []

        def keep(what, fn):
            def wrapper(x, batch, *args, **kwargs):
                shape.append(_input_shape(what, batch))
                result = fn(x, batch, *args, **kwargs)
                caught[what] = [_copied(r) for r in result]
                return result
            return wrapper

        with _fed_methods_replaced(bench_model.model, keep):
            bench_model.model(**data, mode='predict')
        self._boxes[k] = (shape[0], caught)

    @contextmanager
    def feeding(self, bench_model, k):
        """Within the block, `bench_model`'s heads compute as usual and return image `k`'s recorded boxes."""
        if k not in self._boxes:
            raise BenchmarkError(f'no boxes of {self.reference} recorded for image {k}')
        shape, caught = self._boxes[k]

        def feed(what, fn):
            def wrapper(x, batch, *args, **kwargs):
                if _input_shape(what, batch) != shape:
                    raise BenchmarkError(
                        f'{bench_model.name} sees image {k} at {_input_shape(what, batch)}, {self.reference} at '
                        f"{shape}: one model's boxes fit another's only when their test pipelines resize alike")
                fn(x, batch, *args, **kwargs)
                return [_copied(r) for r in caught[what]]
            return wrapper

        with _fed_methods_replaced(bench_model.model, feed):
            yield
