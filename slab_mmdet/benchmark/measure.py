"""What the latency benchmark measures with: device checks and synchronisation, summary
statistics, per-part timers and peak-memory probes."""
import contextlib
import ctypes
import functools
import re
import threading
import time

import numpy as np
import torch
from torch import nn

from .allocator import c_library_function
from .errors import BenchmarkError

MIB = 1024 ** 2
DEVICE_PATTERN = re.compile(r'^(cpu|cuda(:\d+)?)$')

# (attribute of the detector, entry point timed). A detector has some of them (two-stage:
# backbone, neck, rpn_head, roi_head; one-stage: backbone, neck, bbox_head [, mask_head];
# DETR-like: also encoder, decoder); the ones it lacks are skipped. The time outside all
# of them is reported as OTHER_PART.
DETECTOR_PARTS = (
    ('backbone', 'forward'),
    ('neck', 'forward'),
    ('rpn_head', 'predict'),
    ('roi_head', 'predict'),
    ('bbox_head', 'predict'),
    ('mask_head', 'predict'),
    ('encoder', 'forward'),
    ('decoder', 'forward'),
)
OTHER_PART = 'other'


def check_device(device):
    """Return `device` if it names a usable device ('cpu', 'cuda', 'cuda:N'), else raise BenchmarkError."""
    if not isinstance(device, str) or not DEVICE_PATTERN.match(device):
        raise BenchmarkError(f"device {device!r} is not valid; use 'cpu', 'cuda' or 'cuda:N'")
    if device.startswith('cuda'):
        if not torch.cuda.is_available():
            raise BenchmarkError(
                f'device {device!r}: CUDA is not available here (torch {torch.__version__}, built with '
                f'CUDA {torch.version.cuda}); valid here: cpu')
        index = int(device.partition(':')[2] or 0)
        if index >= torch.cuda.device_count():
            raise BenchmarkError(f'device {device!r}: there are {torch.cuda.device_count()} CUDA devices, '
                                 f'valid indices are 0..{torch.cuda.device_count() - 1}')
    return device


def synchronizer(device):
    """A function that waits for the device's queued work (a no-op on the CPU)."""
    if str(device).startswith('cuda'):
        cuda_device = torch.device(device)
        return lambda: torch.cuda.synchronize(cuda_device)
    return lambda: None


def summarize_timings(ms):
    """Statistics of per-image times in milliseconds.

    Returns n, mean, median, p90, p99 (numpy's linear-interpolation percentiles), std
    (sample standard deviation, ddof=1; 0 for a single value), min, max, and images_per_s
    (1000 / mean, the batch-1 throughput).
    """
    values = np.asarray(ms, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f'need a non-empty list of times, got {ms!r}')
    mean = float(values.mean())
    return dict(
        n=int(values.size),
        mean=mean,
        median=float(np.median(values)),
        p90=float(np.percentile(values, 90)),
        p99=float(np.percentile(values, 99)),
        std=float(values.std(ddof=1)) if values.size > 1 else 0.0,
        min=float(values.min()),
        max=float(values.max()),
        images_per_s=1000.0 / mean if mean > 0 else None,
    )


def find_parts(model):
    """Names of the parts of `model` (see DETECTOR_PARTS) that the breakdown times."""
    return [name for name, method in DETECTOR_PARTS
            if isinstance(getattr(model, name, None), nn.Module)
            and callable(getattr(getattr(model, name), method, None))]


class PartTimer:
    """Accumulates the time a detector spends in each of its parts while installed (``with``).

    Each part's entry point (``model.backbone.forward``, ``model.roi_head.predict``, ...) is
    replaced, on that module instance only, by a wrapper that reads `clock` around the call;
    leaving the ``with`` block restores what was there. With a CUDA `sync`, the wrapper waits
    for the queued GPU work before and after the call, so that the part's own kernels are what
    is timed; those waits are why the benchmark times totals in a pass without wrappers on
    CUDA. A part called from inside another part counts for the outer one only, so parts never
    overlap. `elapsed` holds seconds per part since the last `reset()`.
    """

    def __init__(self, model, sync=lambda: None, clock=time.perf_counter):
        self.parts = find_parts(model)
        methods = dict(DETECTOR_PARTS)
        self._targets = [(name, getattr(model, name), methods[name]) for name in self.parts]
        self.sync, self.clock = sync, clock
        self.elapsed = dict.fromkeys(self.parts, 0.0)
        self._depth = 0

    def reset(self):
        self.elapsed = dict.fromkeys(self.parts, 0.0)

    def _wrap(self, name, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            self.sync()
            start = self.clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self.sync()
                self.elapsed[name] += self.clock() - start
                self._depth -= 1
        return timed

    def __enter__(self):
        self._replaced = methods_replaced([(module, method) for _, module, method in self._targets],
                                          lambda j, fn: self._wrap(self.parts[j], fn))
        self._replaced.__enter__()
        return self

    def __exit__(self, *exc_info):
        self._replaced.__exit__(*exc_info)
        return False


@contextlib.contextmanager
def methods_replaced(targets, make_wrapper):
    """Within the block, each ``(module, method)`` of `targets` (the j-th) is replaced on that
    instance by ``make_wrapper(j, bound_method)``; leaving it restores what the instance had."""
    saved = []
    try:
        for j, (module, method) in enumerate(targets):
            saved.append((module, method, module.__dict__.get(method)))
            setattr(module, method, make_wrapper(j, getattr(module, method)))
        yield
    finally:
        for module, method, instance_attr in reversed(saved):
            if instance_attr is None:
                delattr(module, method)
            else:
                setattr(module, method, instance_attr)


def weights_mib(model):
    """Size of the model's parameters and buffers in MiB."""
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values()) / MIB


class CudaPeakMemory:
    """Peak CUDA memory one call allocates on top of what was allocated just before it.

    Reading the allocator's counters costs no GPU work, so this runs inside the timed
    pass. Subtracting what was allocated before the call removes the weights and inputs of
    every model held on the device (the benchmark holds them all), which makes the figure
    the call's own working memory, whatever the interleaving.
    """
    description = ('CUDA: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), minus '
                   'memory_allocated() just before the call (measured in the timed pass)')
    in_timed_pass = True

    def __init__(self, device):
        self.device = torch.device(device)
        self._base = 0

    def start(self):
        torch.cuda.reset_peak_memory_stats(self.device)
        self._base = torch.cuda.memory_allocated(self.device)

    def stop(self):
        """(MiB the call added at its peak, the device's absolute peak in MiB)."""
        peak = torch.cuda.max_memory_allocated(self.device)
        return (peak - self._base) / MIB, peak / MIB


def _proc_status_kib(key):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_peak_rss():
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where that is not possible."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        _proc_status_kib('VmHWM')
        return True
    except (OSError, KeyError):
        return False


def _malloc_trim():
    """glibc's malloc_trim(0), or None where the C library has none."""
    trim = c_library_function('malloc_trim', [ctypes.c_size_t])
    return None if trim is None else (lambda: trim(0))


class RssPeakMemory:
    """Peak growth of the process's resident memory during one call (CPU).

    RSS is process-wide, and memory a model frees stays in the C allocator, so a plain
    before/after difference would mostly show zero, or credit one model with pages another
    left behind. So each measured call gets a clean start: ``malloc_trim(0)`` hands freed
    memory back to the OS, the kernel's peak-RSS mark (VmHWM) is reset to the current RSS
    (``5 > /proc/self/clear_refs``), and after the call VmHWM minus the RSS before it is what
    this call needed at its peak. Trimming makes the next call fault its pages in again, which
    would slow it, so the benchmark measures memory in a separate untimed pass. Where the mark
    cannot be reset (not Linux), a thread samples RSS every millisecond instead (short peaks
    can be missed).
    """
    in_timed_pass = False

    def __init__(self):
        import psutil
        self._process = psutil.Process()
        self._trim = _malloc_trim()
        self.uses_peak_mark = _reset_peak_rss()
        self._base = 0
        self._sampler = None
        how = ('VmHWM (reset through /proc/self/clear_refs) minus RSS before the call'
               if self.uses_peak_mark else 'RSS sampled every 1 ms by a thread, minus RSS before the call')
        trim = 'after malloc_trim(0)' if self._trim else 'without malloc_trim (not glibc): may be underestimated'
        self.description = f'CPU: peak RSS growth per call, {how}, {trim}; measured in a separate untimed pass'

    def _rss(self):
        return self._process.memory_info().rss

    def start(self):
        if self._trim:
            self._trim()
        if self.uses_peak_mark:
            _reset_peak_rss()
            self._base = _proc_status_kib('VmRSS') * 1024
        else:
            self._base = self._rss()
            self._sampler = _RssSampler(self._rss)

    def stop(self):
        """(MiB the call added to RSS at its peak, None)."""
        if self.uses_peak_mark:
            peak = _proc_status_kib('VmHWM') * 1024
        else:
            peak = self._sampler.stop()
        return max(peak - self._base, 0) / MIB, None


class _RssSampler(threading.Thread):
    def __init__(self, read_rss, interval=1e-3):
        super().__init__(daemon=True)
        self._read, self._interval = read_rss, interval
        self._done = threading.Event()
        self.peak = read_rss()
        self.start()

    def run(self):
        while not self._done.is_set():
            self.peak = max(self.peak, self._read())
            time.sleep(self._interval)

    def stop(self):
        self._done.set()
        self.join()
        return max(self.peak, self._read())


def memory_probe(device):
    """The peak-memory probe for `device` (CudaPeakMemory or RssPeakMemory)."""
    return CudaPeakMemory(device) if str(device).startswith('cuda') else RssPeakMemory()
