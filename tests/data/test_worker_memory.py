"""Worker heap thresholds (`vidseg.data.worker_memory`): fixing them makes repeated large buffers reuse the heap
instead of costing fresh pages; training loaders with workers install them; bad values are named."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vidseg.data.worker_memory import WorkerMemory

_FAULTS = """
import ctypes, resource, sys
import numpy as np
from vidseg.data.worker_memory import fix_malloc_thresholds
ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: 4 KiB pages, so faults count pages
if sys.argv[1] == "fixed":
    assert fix_malloc_thresholds(64, 256)
np.ones(40 << 20, np.uint8)  # 40 MiB: above glibc's largest adaptive mmap threshold (32 MiB)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    np.ones(40 << 20, np.uint8)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 10)
"""


def _faults_per_buffer(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_fixed_thresholds_reuse_the_heap_for_large_buffers() -> None:
    adaptive, fixed = _faults_per_buffer("adaptive"), _faults_per_buffer("fixed")
    assert adaptive > 5000  # every 40 MiB buffer is a fresh mapping: ~10,240 pages
    assert fixed < 100


def test_bad_thresholds_are_named() -> None:
    with pytest.raises(ValueError, match="mmap_threshold_mb must be a positive int"):
        WorkerMemory(0, 256)
    with pytest.raises(ValueError, match="trim_threshold_mb must be a positive int"):
        WorkerMemory(64, 1.5)
