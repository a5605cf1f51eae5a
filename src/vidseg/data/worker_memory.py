"""Fixed glibc heap thresholds for DataLoader workers, so their per-clip buffers come back from the heap.

Why: glibc serves large allocations with fresh `mmap`s (its threshold adapts only up to the largest block freed so
far) and trims the heap top eagerly, so each clip's decoded frames, crops and output tensors can be fresh pages,
each a page fault: 1,350-1,900 per 480p clip for items in one process on the 2-core VM. In DataLoader workers,
behind the slot hand-over, `bench_data.py` measured a small gain (226 against 348 faults per clip, ratio 0.53
against 0.50, within noise). Workers only: in the training process the same setting left the step time unchanged
(README, session 11).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import warnings

__all__ = ["WorkerMemory", "fix_malloc_thresholds"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>


def fix_malloc_thresholds(mmap_threshold_mb: int, trim_threshold_mb: int) -> bool:
    """Set glibc's M_MMAP_THRESHOLD and M_TRIM_THRESHOLD for this process (fixing them turns off the adaptive
    thresholds). False where there is no glibc `mallopt` (macOS, Windows, musl) or glibc refused a value."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mmap_ok = mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold_mb) << 20)
    trim_ok = mallopt(_M_TRIM_THRESHOLD, int(trim_threshold_mb) << 20)
    return bool(mmap_ok) and bool(trim_ok)


class WorkerMemory:
    """`worker_init_fn` for DataLoaders: fixes the worker's heap thresholds (picklable, for spawned workers)."""

    def __init__(self, mmap_threshold_mb: int = 64, trim_threshold_mb: int = 256) -> None:
        for name, value in (("mmap_threshold_mb", mmap_threshold_mb), ("trim_threshold_mb", trim_threshold_mb)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"WorkerMemory: {name} must be a positive int, got {value!r}")
        self.mmap_threshold_mb, self.trim_threshold_mb = mmap_threshold_mb, trim_threshold_mb

    def __call__(self, worker_id: int) -> None:
        if not fix_malloc_thresholds(self.mmap_threshold_mb, self.trim_threshold_mb) and worker_id == 0:
            warnings.warn(f"WorkerMemory: glibc mallopt refused or is missing (mmap {self.mmap_threshold_mb} MiB, "
                          f"trim {self.trim_threshold_mb} MiB); workers keep the allocator's defaults",
                          RuntimeWarning, stacklevel=2)
