"""How the C allocator treats the memory a CPU forward frees: the setting every latency comparison runs under.

With glibc's defaults every block over its mmap threshold (at most 32 MiB) is mapped afresh for
each allocation and unmapped when freed, so each forward faults its large tensors' pages in
again: a million or more minor faults per forward for mmdet's PVT and timm's PVTv2 backbones at
COCO size, none for SLAB and its twin, whose tensors stay under the threshold; the cost also
moves with the kernel's state (docs/benchmarks.md, "Page faults and the CPU allocator").
``'reuse'`` (the benchmark's default) keeps freed memory in the process for the next forward,
as a deployment with jemalloc or tcmalloc does.
"""
import ctypes
import ctypes.util

try:
    import resource
except ImportError:   # not a Unix
    resource = None

from .errors import BenchmarkError

CPU_ALLOCATOR_MODES = ('reuse', 'system')
# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# The largest trim threshold mallopt accepts (an int): freed memory at the top of the heap is
# never handed back by free() itself.
NEVER_TRIM = 2 ** 31 - 1
DESCRIPTIONS = {
    'system': "the C library's default (glibc: blocks over its mmap threshold, at most 32 MiB, are mapped "
              "and their pages faulted in at every allocation)",
    'reuse': 'glibc malloc keeping freed memory for reuse (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2^31-1): '
             'no page faults after the warm-up',
}

_mode = 'system'


def c_library_function(name, argtypes, restype=ctypes.c_int):
    """The C library's function ``name`` with its signature set, or None where it has none (not glibc)."""
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6'), name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = argtypes, restype
    return function


def _mallopt():
    """glibc's ``mallopt(param, value) -> int`` (1 on success), or None where the C library has none."""
    return c_library_function('mallopt', [ctypes.c_int, ctypes.c_int])


def check_cpu_allocator(mode):
    if mode not in CPU_ALLOCATOR_MODES:
        raise BenchmarkError(f'cpu allocator {mode!r} is not valid; valid: {", ".join(CPU_ALLOCATOR_MODES)}')


def set_cpu_allocator(mode):
    """Put this process's C allocator in ``mode`` (``CPU_ALLOCATOR_MODES``); returns the mode
    now in effect. ``'reuse'`` cannot be undone within a process, so asking for ``'system'``
    after it is an error; where the C library has no glibc ``mallopt`` (not Linux/glibc),
    ``'reuse'`` leaves the allocator as it is and returns ``'system'``."""
    global _mode
    check_cpu_allocator(mode)
    if mode == _mode:
        return _mode
    if mode == 'system':
        raise BenchmarkError("cpu allocator 'system' was asked for after 'reuse' in the same process; glibc's "
                             "mallopt settings cannot be undone: run the 'system' measurement in its own process")
    mallopt = _mallopt()
    # mmap off first: should the second call fail, blocks are still reused (freed memory may
    # then be trimmed at the heap's top, which only costs faults again).
    if mallopt is not None and mallopt(M_MMAP_MAX, 0) == 1:
        mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)
        _mode = 'reuse'
    return _mode


def cpu_allocator():
    """The mode in effect in this process."""
    return _mode


def cpu_allocator_description():
    """The mode in effect, in words, for a report's machine facts."""
    return f'{_mode}: {DESCRIPTIONS[_mode]}'


def minor_page_faults():
    """This process's minor page faults so far (getrusage), or None where there is no getrusage."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else None
