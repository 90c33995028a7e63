"""slab_mmdet.benchmark.allocator: 'reuse' really stops a large tensor's pages from being
faulted in again (in a child process: the switch cannot be undone), bad modes are refused by
name, the machine facts say which mode ran. Behaviour, never speed."""
import platform
import subprocess
import sys
import textwrap

import pytest

from slab_mmdet.benchmark import BenchmarkError, machine_facts, run_benchmark
from slab_mmdet.benchmark import allocator
from slab_mmdet.benchmark.allocator import M_MMAP_MAX, M_TRIM_THRESHOLD, NEVER_TRIM, set_cpu_allocator

GLIBC = platform.system() == 'Linux' and platform.libc_ver()[0] == 'glibc'

# Page faults per round while a 64 MiB tensor is allocated, filled and freed, over 3 rounds after
# 10 warm-up rounds (64-byte aligned blocks settle into reuse after a few rounds of heap growth).
STEADY_FAULTS_PER_ALLOCATION = textwrap.dedent('''
    import resource, sys, torch
    from slab_mmdet.benchmark.allocator import set_cpu_allocator
    print(set_cpu_allocator(sys.argv[1]))
    def allocate_fill_free():
        torch.empty(16 * 2 ** 20).fill_(1.0)
    for _ in range(10):
        allocate_fill_free()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        allocate_fill_free()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 3)
''')


def steady_faults_per_allocation(mode):
    out = subprocess.run([sys.executable, '-c', STEADY_FAULTS_PER_ALLOCATION, mode], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not GLIBC, reason='the reuse mode sets glibc malloc options')
def test_reuse_keeps_a_freed_tensor_for_the_next_allocation():
    pages = 64 * 2 ** 20 // 4096
    mode, faults = steady_faults_per_allocation('system')
    assert mode == 'system' and faults >= pages // 2     # glibc maps it afresh: every page faults in again
    mode, faults = steady_faults_per_allocation('reuse')
    assert mode == 'reuse' and faults < pages // 20       # the freed memory is reused


def test_reuse_sets_both_options_once(recorded_mallopt):
    assert allocator.cpu_allocator() == 'system'
    assert set_cpu_allocator('reuse') == 'reuse'
    assert set_cpu_allocator('reuse') == 'reuse'
    assert recorded_mallopt == [(M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM)]
    assert machine_facts('cpu')['cpu_allocator'].startswith('reuse: glibc malloc keeping freed memory')


def test_without_glibc_mallopt_reuse_reports_the_default(monkeypatch):
    monkeypatch.setattr(allocator, '_mallopt', lambda: None)
    assert set_cpu_allocator('reuse') == 'system'
    assert machine_facts('cpu')['cpu_allocator'].startswith("system: the C library's default")


def test_bad_modes_are_refused_by_name():
    with pytest.raises(BenchmarkError, match=r"cpu allocator 'jemalloc' is not valid; valid: reuse, system"):
        set_cpu_allocator('jemalloc')
    # run_benchmark refuses it before reading any config.
    with pytest.raises(BenchmarkError, match=r"cpu allocator 'tcmalloc' is not valid"):
        run_benchmark(['configs/no_such_config.py'], cpu_allocator='tcmalloc')
    set_cpu_allocator('reuse')
    with pytest.raises(BenchmarkError, match=r"'system' was asked for after 'reuse' in the same process"):
        set_cpu_allocator('system')

