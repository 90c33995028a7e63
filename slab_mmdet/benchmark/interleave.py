"""The benchmark loop: models interleaved image by image, preprocessing outside the timed region.

For every image, each model first gets its inputs prepared (test pipeline + data_preprocessor,
untimed); then the models run one after the other, in an order rotated by one model per image
(A B C, then B C A, then C A B, ...), so that drift of the machine (clock boosts, heat, other
jobs) and the position in the round hit all of them alike. The timed region is the forward
alone, under ``torch.inference_mode()``, between two device syncs.
"""
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from .allocator import minor_page_faults
from .errors import BenchmarkError
from .images import ImageSet, select_images
from .measure import OTHER_PART, PartTimer, check_device, memory_probe, synchronizer
from .shared_boxes import SharedBoxes

TARGETS = ('detector', 'backbone')
BREAKDOWN_MODES = ('auto', 'same-pass', 'extra-pass', 'off')
TIMED_REGIONS = {
    'detector': "model(**data, mode='predict') (= model.predict: backbone, neck, heads, post-processing)",
    'backbone': 'model.backbone(inputs), inputs = the preprocessed image tensor',
}


@dataclass
class ModelTimings:
    """Raw per-image measurements of one model (lists in image order)."""
    total_ms: list = field(default_factory=list)
    breakdown_ms: dict = field(default_factory=dict)       # part -> ms per image, OTHER_PART included
    breakdown_pass_ms: list = field(default_factory=list)  # total of the pass the parts were timed in
    memory_mib: list = field(default_factory=list)         # peak memory the forward added
    device_peak_mib: list = field(default_factory=list)    # CUDA: the device's absolute peak
    detections: list = field(default_factory=list)         # predicted instances per image
    warmup_ms: list = field(default_factory=list)          # each warm-up forward (the first compiles, if any)
    page_faults: list = field(default_factory=list)        # CPU: minor page faults of each timed forward


@dataclass
class BenchmarkResult:
    """Everything a run measured; ``report.summarize_result`` turns it into statistics."""
    target: str
    device: str
    models: list
    timings: list
    images: ImageSet
    warmup: int
    breakdown: str
    memory_method: str
    schedule: str  # the order of the passes, in words
    events: list   # (pass, model index, image index) of every forward, in call order


def resolve_breakdown(breakdown, device, target='detector'):
    """The per-part mode actually used: 'auto' is 'same-pass' on the CPU, 'extra-pass' on CUDA.

    Timing a part needs a device sync before and after it. On CUDA those syncs stall the
    queue and change the total, so totals are timed without the part wrappers and the parts
    in an extra interleaved pass. On the CPU nothing is queued and the wrappers cost two clock
    reads per part, so both come from the same pass.
    """
    if breakdown not in BREAKDOWN_MODES:
        raise BenchmarkError(f'breakdown mode {breakdown!r} is not valid; valid: {", ".join(BREAKDOWN_MODES)}')
    if target == 'backbone':
        if breakdown not in ('auto', 'off'):
            raise BenchmarkError(f'breakdown {breakdown!r} applies to whole detectors, not to backbone timing')
        return 'off'
    if breakdown == 'auto':
        return 'extra-pass' if str(device).startswith('cuda') else 'same-pass'
    return breakdown


def models_device(models):
    """The one device all models' parameters are on (BenchmarkError if they differ)."""
    devices = {str(next(m.model.parameters()).device) for m in models}
    if len(devices) != 1:
        raise BenchmarkError(f'the models are on different devices ({", ".join(sorted(devices))}); put them on one')
    return devices.pop()


def _predict(model, data):
    return model(**data, mode='predict')


def _backbone(model, data):
    return model.backbone(data['inputs'])


def _count_detections(outputs):
    try:
        return int(len(outputs[0].pred_instances))
    except (AttributeError, IndexError, TypeError):
        return None


def _as_image_set(images):
    if isinstance(images, ImageSet):
        return images
    images = list(images)
    return select_images(images, len(images), 'given image paths')


def describe_pass_order(num_models, warmup, breakdown, memory_pass, shared_boxes=False):
    """The order of the forwards in words, e.g. '1 warm-up round(s) (A B), then per image: timed A B'."""
    names = ' '.join(chr(ord('A') + i) if i < 26 else f'#{i + 1}' for i in range(num_models))
    fed = ("A's boxes recorded in an untimed pass over the images, then fed to every model's heads; "
           if shared_boxes else '')
    passes = ['timed'] + (['breakdown'] if breakdown == 'extra-pass' else [])
    rotation = ' (the timed order rotates by one model per image: A B C, B C A, ...)' if num_models > 1 else ''
    memory = f'; then, after the last timed image, per image: memory {names}' if memory_pass else ''
    return (fed + f'{warmup} warm-up round(s) ({names}), then per image: '
            + ', then '.join(f'{p} {names}' for p in passes) + rotation + memory)


def rotated(n, k):
    """Model indices in the timed order of image k: 0..n-1 rotated left by k."""
    return [(k + j) % n for j in range(n)]


def _benchmark(models, images, warmup, target, breakdown, clock, progress, memory, shared_boxes=False):
    if not models:
        raise BenchmarkError('no models to benchmark')
    if not isinstance(warmup, int) or warmup < 0:
        raise BenchmarkError(f'warm-up iterations must be an integer >= 0, got {warmup!r}')
    images = _as_image_set(images)
    device = check_device(models_device(models))
    mode = resolve_breakdown(breakdown, device, target)
    sync = synchronizer(device)
    probe = memory_probe(device) if memory else None
    # CUDA's probe runs in the timed pass; the CPU's would slow it, so it gets a pass of its own.
    memory_in_timed_pass = probe is not None and probe.in_timed_pass
    memory_pass = probe is not None and not probe.in_timed_pass
    forward = _predict if target == 'detector' else _backbone
    boxes = SharedBoxes(models) if shared_boxes else None
    timers = [PartTimer(m.model, sync, clock) if mode != 'off' else None for m in models]
    timings = [ModelTimings() for _ in models]
    for timer, record in zip(timers, timings):
        if timer:
            record.breakdown_ms = {p: [] for p in timer.parts + [OTHER_PART]}
    events = []
    bar = None
    if progress:
        from mmengine.utils import ProgressBar
        # The reference pass and the memory pass, if any, go over the images too.
        bar = ProgressBar(warmup + len(images.paths) * (1 + bool(boxes) + memory_pass))

    def run(i, data, kind, k):
        events.append((kind, i, k))
        with boxes.feeding(models[i], k) if boxes else nullcontext():
            return forward(models[i].model, data)

    count_faults = device == 'cpu' and minor_page_faults() is not None

    def timed_run(i, data, kind, k, timer=None, measure_memory=False):
        """Seconds of one forward between device syncs (with `timer`'s parts, if given)."""
        with timer or nullcontext():
            if timer:
                timer.reset()
            if measure_memory:
                probe.start()
            faults = minor_page_faults() if count_faults and kind == 'timed' else None
            sync()
            start = clock()
            outputs = run(i, data, kind, k)
            sync()
            elapsed = clock() - start
            if faults is not None:
                timings[i].page_faults.append(minor_page_faults() - faults)
            if measure_memory:
                growth, device_peak = probe.stop()
                timings[i].memory_mib.append(growth)
                if device_peak is not None:
                    timings[i].device_peak_mib.append(device_peak)
        if timer:
            record = timings[i]
            for part, seconds in timer.elapsed.items():
                record.breakdown_ms[part].append(seconds * 1e3)
            record.breakdown_ms[OTHER_PART].append((elapsed - sum(timer.elapsed.values())) * 1e3)
            record.breakdown_pass_ms.append(elapsed * 1e3)
        return elapsed, outputs

    with torch.inference_mode():
        for k, path in enumerate(images.paths if boxes else ()):
            events.append(('reference', 0, k))
            boxes.record(models[0], models[0].prepare(path, k), k)
            if bar:
                bar.update()
        for w in range(warmup):
            k = w % len(images.paths)
            batch = [m.prepare(images.paths[k], k) for m in models]
            for i, data in enumerate(batch):
                sync()
                start = clock()
                run(i, data, 'warmup', k)
                sync()
                timings[i].warmup_ms.append((clock() - start) * 1e3)
            if bar:
                bar.update()
        for k, path in enumerate(images.paths):
            batch = [m.prepare(path, k) for m in models]   # untimed: pipeline + data_preprocessor
            # Rotated, so that no model always runs first (after the previous image's other
            # passes) or right after the same neighbour: position effects average out.
            for i in rotated(len(models), k):
                data = batch[i]
                elapsed, outputs = timed_run(i, data, 'timed', k, timers[i] if mode == 'same-pass' else None,
                                             measure_memory=memory_in_timed_pass)
                timings[i].total_ms.append(elapsed * 1e3)
                timings[i].detections.append(_count_detections(outputs) if target == 'detector' else None)
                del outputs   # not kept alive during the next model's forward
            if mode == 'extra-pass':
                for i, data in enumerate(batch):
                    timed_run(i, data, 'breakdown', k, timers[i])
            if bar:
                bar.update()
        # After every timed image: each measured call starts with malloc_trim, which hands the
        # freed pages back to the OS, and the timed forwards that followed would fault them in again.
        # The inputs are prepared again (untimed) rather than kept: all images' tensors would be GBs.
        for k, path in enumerate(images.paths if memory_pass else ()):
            batch = [m.prepare(path, k) for m in models]
            for i, data in enumerate(batch):
                timed_run(i, data, 'memory', k, measure_memory=True)
            if bar:
                bar.update()
    if bar:
        bar.file.write('\n')
    schedule = describe_pass_order(len(models), warmup, mode, memory_pass, shared_boxes)
    return BenchmarkResult(target, device, list(models), timings, images, warmup, mode,
                           probe.description if probe else 'not measured', schedule, events)


def benchmark_detectors(models, images, warmup=10, breakdown='auto', clock=time.perf_counter, progress=True,
                        memory=True, shared_boxes=False):
    """Batch-1 latency of whole detectors, interleaved image by image.

    Args:
        models: BenchModel list (see ``load_models``); the first is the reference for ratios.
        images: an ImageSet (see ``resolve_images``) or a list of image paths; one timed
            forward per image and model.
        warmup: untimed forwards per model before timing (interleaved too).
        breakdown: per-part timing: 'auto', 'same-pass', 'extra-pass' or 'off' (see
            ``resolve_breakdown``).
        clock: seconds as a float (``time.perf_counter``; replaceable for tests).
        progress: show a progress bar.
        memory: measure each forward's peak memory (on the CPU in an extra untimed pass
            per image; False skips it where only latency is wanted).
        shared_boxes: feed the first model's RPN proposals and RoI detections (recorded in an
            untimed pass) to every model's heads after they compute their own, so that the head
            work is the same in every model (two-stage detectors; see ``shared_boxes.SharedBoxes``):
            for comparing backbones inside detectors whose weights find different boxes.
    """
    return _benchmark(models, images, warmup, 'detector', breakdown, clock, progress, memory, shared_boxes)


def benchmark_backbones(models, images, warmup=10, clock=time.perf_counter, progress=True, memory=True):
    """Batch-1 latency of the detectors' backbones alone: ``model.backbone(inputs)``, where
    inputs is the preprocessed image tensor; otherwise as ``benchmark_detectors``."""
    return _benchmark(models, images, warmup, 'backbone', 'off', clock, progress, memory)
