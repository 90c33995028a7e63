"""Whether two forms of one detector compute the same thing: PyTorch before and after fusion,
and PyTorch against ONNX Runtime running the exported graph (features, or whole detections
compared regardless of the order of tied scores)."""
import torch
from mmengine.structures import InstanceData

from .. import apis


def compare_features(a, b):
    """Largest |a - b| / max|a| over matching feature maps (tuples of tensors)."""
    return max(float((x - y).abs().max() / x.abs().max().clamp_min(1e-12)) for x, y in zip(a, b))


def compare_detections(a, b, image_shape, score_tolerance=1e-4):
    """How far two ``pred_instances`` are apart, regardless of the order of tied scores.

    Detections whose scores tie (within ``score_tolerance``, as they do by the dozen in an
    untrained model) come out in either order after float-level differences, and at the
    ``max_per_img`` cut-off either of them may be kept. So each detection of ``a`` is
    matched to the nearest detection of ``b`` with the same label and a score within
    ``score_tolerance``; detections tied with the lowest kept score may go unmatched.

    Returns a dict: ``count`` (len a, len b), and when the counts agree, ``boxes``
    (largest coordinate difference of a matched pair relative to the image's longer
    side; inf if a detection has no match), ``scores`` (largest difference between the
    sorted scores), ``labels_equal`` (every detection that must match has a same-label
    match), ``masks`` (fraction of the matched pairs' mask pixels that differ; binary masks
    flip where a probability sits at the threshold, as in an untrained mask head, so this
    is a fraction, not a maximum).
    """
    out = dict(count=(len(a), len(b)))
    if len(a) != len(b) or not len(a):
        return out
    scores_a, scores_b = a.scores.double(), b.scores.double()
    out['scores'] = float((scores_a.sort().values - scores_b.sort().values).abs().max())
    box_dist = (a.bboxes.double()[:, None, :] - b.bboxes.double()[None, :, :]).abs().amax(-1) / max(image_shape)
    candidate = (a.labels[:, None] == b.labels[None, :]) & \
        ((scores_a[:, None] - scores_b[None, :]).abs() <= score_tolerance)
    box_dist = box_dist.masked_fill(~candidate, float('inf'))
    nearest, match = box_dist.min(dim=1)
    # Ties with the lowest kept score may have been cut off in the other model.
    must_match = scores_a > min(float(scores_a.min()), float(scores_b.min())) + score_tolerance
    matched = torch.isfinite(nearest)
    out['labels_equal'] = bool(matched[must_match].all())
    out['boxes'] = float(nearest[matched].max()) if bool(matched.any()) else float('inf')
    if not out['labels_equal']:
        out['boxes'] = float('inf')
    if 'masks' in a and 'masks' in b and bool(matched.any()):
        idx = matched.nonzero().flatten()
        out['masks'] = float((a.masks[idx] != b.masks[match[idx]]).float().mean())
    return out


def detections_equivalent(diff, tolerance):
    """Whether :func:`compare_detections`' ``diff`` is within ``tolerance`` everywhere."""
    return (diff['count'][0] == diff['count'][1] and diff.get('labels_equal', True)
            and all(diff.get(k, 0.0) <= tolerance for k in ('boxes', 'scores', 'masks')))


def check_images(model, sizes, seed=0):
    """What an exported graph is checked on: the config's first test image through its test
    pipeline (when the dataset can be read), then a random image of each size in ``sizes``.
    Returns ``[(images, image_shape (h, w))]``."""
    inputs = []
    try:
        data = apis.detector_inputs(model, apis.inference_pipeline(model.cfg), apis.first_test_image(model.cfg))
        inputs.append((data['inputs'], tuple(data['data_samples'][0].img_shape)))
    except (FileNotFoundError, KeyError, AttributeError):
        pass   # no readable test set: random images only
    gen = torch.Generator().manual_seed(seed)
    inputs += [(torch.randn(1, 3, h, w, generator=gen), (h, w)) for h, w in sizes]
    return inputs


def onnx_feature_differences(module, session, sizes, seed=0):
    """Largest relative difference (:func:`compare_features`, per output) between ``module``'s
    outputs in PyTorch (e.g. :class:`~.onnx_export.FeatureExtractor`) and those of its graph in
    ONNX Runtime (``session``, :func:`~.graph.onnx_session`), for a random image of each
    (height, width) in ``sizes``: ``{(h, w): difference}``."""
    gen = torch.Generator().manual_seed(seed)
    result = {}
    for h, w in sizes:
        image = torch.randn(1, 3, h, w, generator=gen)
        with torch.no_grad():
            expected = module(image)
        got = session.run(None, {'images': image.numpy()})
        if len(got) != len(expected):
            raise AssertionError(f'ONNX Runtime gave {len(got)} outputs, PyTorch {len(expected)}')
        result[(h, w)] = compare_features(expected, tuple(torch.from_numpy(g) for g in got))
    return result


def _instances(outputs, names):
    values = dict(zip(names, outputs))
    instances = InstanceData(bboxes=values['boxes'], scores=values['scores'], labels=values['labels'])
    if 'masks' in values:
        instances.masks = values['masks'] >= 0.5
    return instances


def runtime_output_differences(want, got, output_names, input_hw, score_tolerance=1e-4):
    """How far two runtimes' outputs of one exported graph are apart (``want``, ``got``: numpy
    arrays in the graph's output order): a whole-detector graph (an output named ``boxes``) by
    :func:`compare_detections`, within ``score_tolerance`` for tied scores; a feature graph by
    :func:`compare_features`. Returns ``(equivalent_within, diff)``: a function of a tolerance,
    and the diff (a dict for detections, the relative difference for features)."""
    if len(want) != len(got):
        raise AssertionError(f'the runtimes gave {len(want)} and {len(got)} outputs')
    if 'boxes' in output_names:
        diff = compare_detections(_instances([torch.from_numpy(w) for w in want], output_names),
                                  _instances([torch.from_numpy(g) for g in got], output_names), input_hw,
                                  score_tolerance=score_tolerance)
        return (lambda tolerance: detections_equivalent(diff, tolerance)), diff
    diff = compare_features(tuple(torch.from_numpy(w) for w in want), tuple(torch.from_numpy(g) for g in got))
    return (lambda tolerance: diff <= tolerance), diff


def onnx_detection_differences(graph_module, runner, inputs, tolerance, logger=print):
    """ONNX Runtime (``runner``, an :class:`~.onnx_detector.OnnxDetector`) against PyTorch (the
    same :class:`~.detector_graph.DetectorGraph`) on each of ``inputs`` (:func:`check_images`),
    compared by :func:`compare_detections` with ``tolerance`` for tied scores.
    Returns ``{(H, W): diff}``."""
    diffs = {}
    names = graph_module.output_names
    for image, image_hw in inputs:
        h, w = image.shape[-2:]
        with torch.no_grad():
            want = graph_module(image, torch.tensor(image_hw))
        got = runner.run(image.numpy(), image_hw)
        diff = compare_detections(_instances(want, names), _instances([torch.from_numpy(got[k]) for k in names], names),
                                  (h, w), score_tolerance=tolerance)
        diffs[(h, w)] = diff
        logger(f'[export] ONNX Runtime vs PyTorch at {h}x{w}: {diff["count"][0]} detections; {diff}')
    return diffs


__all__ = ['check_images', 'compare_detections', 'compare_features', 'detections_equivalent',
           'onnx_detection_differences', 'onnx_feature_differences']
