"""The references `bench_data.py` sets its DataLoader against: pure decoding of the same frames, alone and in as
many processes at once as workers, and the same DataLoader over items that only spin for decoding's CPU time."""

from __future__ import annotations

import multiprocessing
import resource
import statistics
import time
from typing import Any

import torch
from torch.utils.data import DataLoader

from vidseg.data.clip_dataset import ClipDataset
from vidseg.data.video import open_frames


def rate_pure_decode(ds: ClipDataset, n: int) -> tuple[float, float, float]:
    """(clips/s, CPU ms per clip, minor page faults per clip) decoding exactly the frames the dataset samples for
    items 0..n-1, with the same reader."""
    plan = []
    for i in range(n):
        video = ds.dataset.videos[i // ds.samples_per_video]
        plan.append((video, ds.sampler.sample(video, ds.rng_for(i))))
    readers: dict[str, Any] = {}
    start, cpu, faults = time.perf_counter(), time.process_time(), minor_faults(resource.RUSAGE_SELF)
    for video, frames in plan:
        reader = readers.get(video.video_id) or readers.setdefault(video.video_id, open_frames(video.frames))
        reader.read(frames)
    return (n / (time.perf_counter() - start), 1000.0 * (time.process_time() - cpu) / n,
            (minor_faults(resource.RUSAGE_SELF) - faults) / n)


def rate_pure_decode_concurrent(ds: ClipDataset, n: int, processes: int) -> tuple[float, float]:
    """(clips/s per process, CPU ms per clip) of `processes` forked processes decoding items 0..n-1's frames at
    the same time, as `rate_pure_decode` does alone: what this machine gives each of that many decoders at once
    (shared caches, memory bandwidth, clock, other tenants), the ceiling of a DataLoader with as many workers."""
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_decode_after, args=(ds, n, start, results)) for _ in range(processes)]
    for proc in procs:
        proc.start()
    got = [results.get() for _ in procs]
    for proc in procs:
        proc.join()
    failed = [r for r in got if isinstance(r, str)]
    if failed:
        raise RuntimeError(f"pure decode in {processes} processes at once failed: {failed[0]}")
    return statistics.mean(r[0] for r in got), statistics.mean(r[1] for r in got)


def _decode_after(ds: ClipDataset, n: int, start: Any, results: Any) -> None:
    try:
        start.wait()
        results.put(rate_pure_decode(ds, n)[:2])
    except BaseException as e:  # the parent waits for one result per process: never leave it waiting
        results.put(f"{type(e).__name__}: {e}")


def minor_faults(who: int) -> int:
    """Minor page faults so far of this process (RUSAGE_SELF) or its joined children (RUSAGE_CHILDREN): fresh
    pages, e.g. the shared memory of each worker hand-over, cost a fault each."""
    return resource.getrusage(who).ru_minflt


class BusyItems(torch.utils.data.Dataset):
    """`n` items that each spin for `ms` of CPU time and return their index: a pipeline with no work but decoding."""

    def __init__(self, n: int, ms: float) -> None:
        self.n, self.seconds = n, ms / 1000.0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        start = time.thread_time()
        while time.thread_time() - start < self.seconds:
            pass
        return index


def rate_loader_floor(n: int, workers: int, ms: float) -> tuple[float, float]:
    """(clips/s per worker ÷ what one process spinning gets (1000 / ms), this process's CPU ms per batch received)
    of the same DataLoader (batch size 1, `workers` workers) over items that only spin for pure decode's CPU ms per
    clip: the most a pipeline whose items cost exactly their decoding could reach per worker here, the DataLoader's
    own work and the machine's sharing left."""
    loader = DataLoader(BusyItems(n + workers, ms), batch_size=1, num_workers=workers, prefetch_factor=4,
                        collate_fn=_first)
    batches = iter(loader)
    for _ in range(workers):
        next(batches)
    start, cpu, seen = time.perf_counter(), time.process_time(), 0
    for _ in batches:
        seen += 1
    main_ms = 1000.0 * (time.process_time() - cpu) / max(seen, 1)
    return seen / (time.perf_counter() - start) / workers / (1000.0 / ms), main_ms


def _first(items: list[int]) -> int:
    return items[0]
