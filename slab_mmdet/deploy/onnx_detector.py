"""Running an exported detector graph (:mod:`.detector_graph`) in ONNX Runtime: checking that a
file is one, one preprocessed image in, mmdet's detections out (boxes mapped back to the
original image, masks pasted into it), and a whole test set evaluated with mmdet's metric."""
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from mmdet.registry import DATASETS, METRICS, MODELS
from mmengine.dataset import pseudo_collate
from mmengine.registry import init_default_scope
from mmengine.structures import InstanceData

from .. import apis
from .detector_graph import DETECTOR_INPUTS
from .graph import graph_inputs, onnx_session, read_graph
from .openvino_runtime import OpenVinoGraph

RUNTIMES = ('onnxruntime', 'openvino')


class NotADetectorGraph(ValueError):
    """An ONNX file that is not a whole-detector graph written by ``export_onnx.py --detector``."""


class OnnxDetector:
    """An exported detector graph run on the CPU by ONNX Runtime (default) or OpenVINO.

    Args:
        path (str): The .onnx file (``tools/export_onnx.py ... --detector``); its inputs,
            outputs and metadata are read from it whatever the runtime.
        threads (int | None): Threads of the runtime (None: its default).
        runtime (str): 'onnxruntime' or 'openvino' (the optional extra, f32).
        openvino_ir (str | None): With 'openvino', an OpenVINO IR (.xml) of this graph to run
            instead of the .onnx, e.g. its int8 version from
            :func:`~.quantize.quantize_with_openvino`.
        openvino_precision (str): With 'openvino', 'f32' (default) or 'bf16'
            (:class:`~.openvino_runtime.OpenVinoGraph`).

    Raises:
        NotADetectorGraph: the file's inputs and outputs are not a detector graph's
            (e.g. a backbone + neck export); the message says what it has.
    """

    def __init__(self, path, threads=None, runtime='onnxruntime', openvino_ir=None, openvino_precision='f32'):
        if runtime not in RUNTIMES:
            raise ValueError(f'runtime {runtime!r}: expected one of {RUNTIMES}')
        if (openvino_ir is not None or openvino_precision != 'f32') and runtime != 'openvino':
            raise ValueError(f'openvino_ir {openvino_ir!r} / openvino_precision {openvino_precision!r} are '
                             f'OpenVINO\'s: pass runtime=\'openvino\'')
        self.path, self.runtime = path, runtime
        if runtime == 'onnxruntime':
            self.session = onnx_session(path, threads)
            inputs = [i.name for i in self.session.get_inputs()]
            outputs = [o.name for o in self.session.get_outputs()]
            meta = self.session.get_modelmeta().custom_metadata_map
            self._run = lambda feed: self.session.run(None, feed)
        else:
            model = read_graph(path)
            inputs = graph_inputs(model)
            outputs = [o.name for o in model.graph.output]
            meta = {prop.key: prop.value for prop in model.metadata_props}
        if meta.get('slab_mmdet.kind') != 'detector' or tuple(inputs) != DETECTOR_INPUTS \
                or outputs[:3] != ['boxes', 'scores', 'labels']:
            raise NotADetectorGraph(
                f'{path} is not a whole-detector graph: its inputs are {inputs} and its outputs {outputs[:6]}'
                f"{' ...' if len(outputs) > 6 else ''}; a detector graph takes {list(DETECTOR_INPUTS)} and returns "
                f'boxes, scores, labels (and masks). Export one with tools/export_onnx.py CONFIG CHECKPOINT --out '
                f'FILE --detector (a graph without --detector holds the backbone and neck only).')
        if runtime == 'openvino':
            compiled = OpenVinoGraph(openvino_ir or path, threads=threads, precision=openvino_precision)
            self._run = compiled.run
        self.output_names = outputs
        self.with_mask = 'masks' in outputs
        self.min_input_size = int(meta.get('slab_mmdet.min_input_size', 32))
        self.mask_thr_binary = float(meta.get('slab_mmdet.mask_thr_binary', 0.5))
        self.classes = json.loads(meta.get('slab_mmdet.classes', 'null'))
        static = meta.get('slab_mmdet.static_input_hw')
        self.static_input_hw = tuple(json.loads(static)) if static else None

    def check_input(self, images, image_shape):
        """Refuse an input the graph cannot take, naming it (shape, channels, size)."""
        if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[0] != 1:
            shape = getattr(images, 'shape', None)
            raise ValueError(f'{self.path}: images must be a (1, 3, H, W) float32 array (one preprocessed image), '
                             f'got {type(images).__name__} of shape {shape}')
        if images.shape[1] != 3:
            raise ValueError(f'{self.path}: images must have 3 channels (RGB, as the data preprocessor gives them), '
                             f'got {images.shape[1]} (shape {images.shape})')
        h, w = images.shape[2:]
        if min(h, w) < self.min_input_size:
            raise ValueError(f'{self.path}: the input is {h}x{w}, below the backbone\'s minimum of '
                             f'{self.min_input_size}x{self.min_input_size}')
        if self.static_input_hw and (h, w) != self.static_input_hw:
            raise ValueError(f'{self.path} was exported with a fixed input size {self.static_input_hw[0]}x'
                             f'{self.static_input_hw[1]}, got {h}x{w}; export it without --static for other sizes')
        image_h, image_w = (int(v) for v in image_shape)
        if not (0 < image_h <= h and 0 < image_w <= w):
            raise ValueError(f'{self.path}: image_shape {image_h}x{image_w} (the image before padding) must fit in the '
                             f'{h}x{w} input')

    def run(self, images, image_shape):
        """The graph's raw outputs for one preprocessed image: a dict of numpy arrays
        (``boxes`` in input pixels, ``scores``, ``labels``, ``masks`` 28x28 probabilities)."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        self.check_input(images, image_shape)
        outputs = self._run({'images': images, 'image_shape': np.asarray(image_shape, dtype=np.int64)})
        return dict(zip(self.output_names, outputs))


def paste_masks(probs, boxes, image_h, image_w, threshold=0.5):
    """Masks of the whole image from 28x28 mask probabilities: each sampled (bilinearly, at the
    pixel centres inside its box) into the image, then thresholded (``threshold`` < 0: the
    probabilities as uint8 0..255). ``boxes`` are in the image's pixels. Returns (N, h, w)."""
    probs = torch.as_tensor(probs, dtype=torch.float32)
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    n = probs.shape[0]
    dtype = torch.bool if threshold >= 0 else torch.uint8
    if n == 0:
        return torch.zeros(0, image_h, image_w, dtype=dtype)
    x0, y0, x1, y1 = boxes.unbind(1)
    ys = torch.arange(image_h, dtype=torch.float32) + 0.5
    xs = torch.arange(image_w, dtype=torch.float32) + 0.5
    # Normalised coordinates of every pixel centre in each box's frame ([-1, 1] inside it).
    gy = ((ys[None, :] - y0[:, None]) / (y1 - y0)[:, None] * 2 - 1).nan_to_num(0.0, 0.0, 0.0)
    gx = ((xs[None, :] - x0[:, None]) / (x1 - x0)[:, None] * 2 - 1).nan_to_num(0.0, 0.0, 0.0)
    grid = torch.stack([gx[:, None, :].expand(n, image_h, image_w), gy[:, :, None].expand(n, image_h, image_w)], 3)
    masks = F.grid_sample(probs[:, None], grid, align_corners=False)[:, 0]
    # Only the pixels within one of the box (what mmdet pastes): a box of zero width or height
    # samples its mask's middle, which must not spread along the whole image.
    cols, rows = torch.arange(image_w), torch.arange(image_h)
    inside_x = (cols[None] >= x0.floor()[:, None] - 1) & (cols[None] < x1.ceil()[:, None] + 1)
    inside_y = (rows[None] >= y0.floor()[:, None] - 1) & (rows[None] < y1.ceil()[:, None] + 1)
    masks = masks * (inside_y[:, :, None] & inside_x[:, None, :])
    return masks >= threshold if threshold >= 0 else (masks * 255).to(torch.uint8)


def to_instances(outputs, scale_factor, ori_shape, mask_thr_binary=0.5):
    """The graph's outputs for one image as mmdet's ``pred_instances``: boxes divided by the
    preprocessing's ``scale_factor`` (w, h) into the original image (``ori_shape`` (h, w)),
    masks pasted into it."""
    boxes = torch.from_numpy(outputs['boxes']).float()
    sx, sy = scale_factor
    boxes = boxes / boxes.new_tensor([sx, sy, sx, sy])
    instances = InstanceData(bboxes=boxes, scores=torch.from_numpy(outputs['scores']).float(),
                             labels=torch.from_numpy(outputs['labels']).long())
    if 'masks' in outputs:
        instances.masks = paste_masks(outputs['masks'], boxes, int(ori_shape[0]), int(ori_shape[1]), mask_thr_binary)
    return instances


class Preprocessor:
    """A config's test pipeline and data preprocessor, without a model: an image file in, the
    graph's inputs out. ``preprocess(path)`` returns ``(images, sample)``: the (1, 3, H, W)
    float32 array and the DetDataSample whose ``metainfo`` has ``img_shape`` (the graph's
    ``image_shape``), ``scale_factor`` and ``ori_shape`` (for :func:`to_instances`)."""

    def __init__(self, config, cfg_options=None):
        self.cfg = apis.load_config(config, cfg_options)
        init_default_scope(self.cfg.get('default_scope', 'mmdet'))
        self.pipeline = apis.inference_pipeline(self.cfg)
        self.data_preprocessor = MODELS.build(self.cfg.model.data_preprocessor)

    def __call__(self, image, img_id=0):
        with torch.no_grad():
            data = self.data_preprocessor(pseudo_collate([self.pipeline(dict(img_path=image, img_id=img_id))]), False)
        return data['inputs'].numpy(), data['data_samples'][0]


def evaluate_onnx_detector(config, onnx_path, cfg_options=None, threads=None, max_images=None, log=print,
                           runtime='onnxruntime', openvino_ir=None, openvino_precision='f32'):
    """Evaluate the detector graph ``onnx_path`` on ``config``'s test set with the config's
    test evaluator (mmdet's CocoMetric for COCO): each image goes through the config's test
    pipeline and data preprocessor (:class:`Preprocessor`), the graph runs in ``runtime``
    (:class:`OnnxDetector`), the detections are mapped back and evaluated. Returns
    ``(metrics, per-image seconds of the graph)``."""
    detector = OnnxDetector(onnx_path, threads, runtime, openvino_ir, openvino_precision)
    preprocess = Preprocessor(config, cfg_options)
    cfg = preprocess.cfg
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    evaluator_cfg = cfg.test_evaluator
    metrics = [METRICS.build(c) for c in (evaluator_cfg if isinstance(evaluator_cfg, list) else [evaluator_cfg])]
    for metric in metrics:
        metric.dataset_meta = dataset.metainfo
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    times, every = [], max(1, count // 10)
    where = 'ONNX Runtime' if runtime == 'onnxruntime' else 'OpenVINO'
    for i in range(count):
        info = dataset.get_data_info(i)
        images, sample = preprocess(info['img_path'], info['img_id'])
        start = time.perf_counter()
        outputs = detector.run(images, sample.metainfo['img_shape'])
        times.append(time.perf_counter() - start)
        sample.pred_instances = to_instances(outputs, sample.metainfo['scale_factor'], sample.metainfo['ori_shape'],
                                             detector.mask_thr_binary)
        for metric in metrics:
            metric.process({}, [sample.to_dict()])
        if log and ((i + 1) % every == 0 or i + 1 == count):
            log(f'[test_onnx] {i + 1}/{count} images, {np.mean(times) * 1e3:.0f} ms per image in {where}')
    results = {}
    for metric in metrics:
        results.update(metric.evaluate(count))
    return results, times


__all__ = ['RUNTIMES', 'NotADetectorGraph', 'OnnxDetector', 'Preprocessor', 'evaluate_onnx_detector', 'paste_masks',
           'to_instances']
