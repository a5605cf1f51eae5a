"""The references `bench_data.py` sets its DataLoader against: pure decoding of the same frames, alone and in as
many processes at once as workers, the same DataLoader over items that only spin for decoding's CPU time or only
decode (and hand the crops over), the same
items made on threads of one process (no inter-process hand-over), and the items' own work as the pipeline meets it
and with their frames decoded beforehand (warm caches)."""

from __future__ import annotations

import copy
import multiprocessing
import queue
import resource
import statistics
import threading
import time
from typing import Any

import torch
from torch.utils.data import DataLoader

from vidseg.data.clip_dataset import ClipDataset
from vidseg.data.collate import stack_for_handover
from vidseg.data.handover import SlotHandover
from vidseg.data.video import open_frames
from vidseg.data.worker_memory import WorkerMemory


def rate_pure_decode(ds: ClipDataset, n: int) -> tuple[float, float, float]:
    """(clips/s, CPU ms per clip, minor page faults per clip) decoding exactly the frames the dataset samples for
    items 0..n-1, with the same reader."""
    plan = _plan(ds, n)
    readers: dict[str, Any] = {}
    start, cpu, faults = time.perf_counter(), time.process_time(), minor_faults(resource.RUSAGE_SELF)
    for video, frames in plan:
        reader = readers.get(video.video_id) or readers.setdefault(video.video_id, open_frames(video.frames))
        reader.read(frames)
    return (n / (time.perf_counter() - start), 1000.0 * (time.process_time() - cpu) / n,
            (minor_faults(resource.RUSAGE_SELF) - faults) / n)


def _plan(ds: ClipDataset, n: int) -> list[tuple[Any, list[int]]]:
    """(video, frame indices) that items 0..n-1 of `ds` sample (indices past its end wrap around)."""
    plan = []
    for i in (k % len(ds) for k in range(n)):
        video = ds.dataset.videos[i // ds.samples_per_video]
        plan.append((video, [int(f) for f in ds.sampler.sample(video, ds.rng_for(i))]))
    return plan


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


class DecodeItems(torch.utils.data.Dataset):
    """Items that only decode the frames items 0..n-1 of `ds` sample (with the reader pure decode uses) and return
    an empty tensor, or (`crop`) the top-left crop of `ds.transform.crop_fraction` of the frames, uint8
    [T, 3, h, w], as a view that the collate copies into the hand-over slot, as training's collate does its crops."""

    def __init__(self, ds: ClipDataset, n: int, crop: bool) -> None:
        self.plan, self.crop = _plan(ds, n), crop
        self.fraction = ds.transform.crop_fraction or (1.0, 1.0)
        self.readers: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> torch.Tensor:
        video, frames = self.plan[index]
        reader = self.readers.get(video.video_id) or self.readers.setdefault(video.video_id, open_frames(video.frames))
        pixels = torch.from_numpy(reader.read(frames)).permute(0, 3, 1, 2)
        if not self.crop:
            return pixels.new_empty(0)
        h, w = round(self.fraction[0] * pixels.shape[-2]), round(self.fraction[1] * pixels.shape[-1])
        return pixels[:, :, :h, :w]


def _stack_decoded(items: list[torch.Tensor]) -> torch.Tensor:
    return items[0] if items[0].dim() == 1 else stack_for_handover(items)


def rate_loader_decode(ds: ClipDataset, n: int, workers: int, crop: bool) -> float:
    """Clips/s per worker of a DataLoader like training's (batch size 1, `SlotHandover`, the workers' heap
    thresholds) over `DecodeItems`: decoding alone, or (`crop`) decoding and handing the crops over, with none of
    the items' other work (sampling draws, targets, transform, collate of a `Batch`). The ratio of any pipeline
    that hands crops over this way is capped by the second."""
    loader = DataLoader(DecodeItems(ds, n + workers, crop), batch_size=1, num_workers=workers, prefetch_factor=4,
                        collate_fn=SlotHandover(_stack_decoded, workers, slots_per_worker=6),
                        worker_init_fn=WorkerMemory())
    batches = iter(loader)
    for _ in range(workers):  # start-up and each worker's first clip excluded
        next(batches)
    start, seen = time.perf_counter(), 0
    for _ in batches:
        seen += 1
    return seen / (time.perf_counter() - start) / workers


def rate_threads(ds: ClipDataset, n: int, threads: int) -> tuple[float, float]:
    """(clips/s per thread, CPU ms per clip of this process) of items 0..n-1 made and collated by `threads` threads
    of this process, each batch handed to this thread through a queue: a loader with no worker processes, no
    pickling and no shared-memory hand-over. The JPEG decoder releases the GIL; the items' and the collate's Python
    work holds it. Set against the DataLoader, it shows what the inter-process costs are of the gap."""
    batches: queue.Queue[Any] = queue.Queue(maxsize=4 * threads)
    errors: list[BaseException] = []

    def make(first: int, dataset: ClipDataset) -> None:
        try:
            for i in range(first, n + threads, threads):
                batches.put(dataset.collate([dataset[i % len(dataset)]]))
        except BaseException as e:  # this thread waits for n batches: never leave it waiting
            errors.append(e)
            batches.put(None)

    # one copy of the dataset per thread: each opens its own readers (pickling drops them, as for workers)
    workers = [threading.Thread(target=make, args=(k, copy.copy(ds)), daemon=True) for k in range(threads)]
    for w in workers:
        w.start()

    def take() -> None:
        if batches.get() is None:
            raise RuntimeError(f"items on {threads} threads failed: {type(errors[0]).__name__}: {errors[0]}") \
                from errors[0]

    for _ in range(threads):  # start-up and each thread's first clip excluded, as for the DataLoader
        take()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        take()
    rate, ms = n / (time.perf_counter() - start) / threads, 1000.0 * (time.process_time() - cpu) / n
    for w in workers:
        w.join()
    return rate, ms


class _DecodedFrames:
    """A reader that decodes each distinct frame request once, then returns it from memory, and adds the CPU time of
    its reads to `read_s`."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.decoded: dict[tuple[int, ...], Any] = {}
        self.read_s = 0.0

    def read(self, indices: list[int]) -> Any:
        start = time.thread_time()
        key = tuple(indices)
        frames = self.decoded.get(key)
        if frames is None:
            frames = self.decoded[key] = self.reader.read(indices)
        self.read_s += time.thread_time() - start
        return frames


def non_decode_cpu(ds: ClipDataset, n: int) -> tuple[float, float]:
    """(cold, warm): CPU ms per clip of items 0..n-1 outside reading their frames, first as the pipeline meets them
    (each item decodes its frames), then again with those frames kept in memory (no decoding between clips to
    evict the caches and branch predictors the items' own work runs on). Holds the decoded frames of all `n` clips."""
    items = copy.copy(ds)
    readers: list[_DecodedFrames] = []

    def factory(source: Any, backend: str) -> _DecodedFrames:
        readers.append(_DecodedFrames(ds.reader_factory(source, backend)))
        return readers[-1]

    items.reader_factory = factory
    items.max_open_readers = len(ds.dataset.videos)  # keep every reader and what it decoded
    result = []
    for _ in range(2):
        read, cpu = sum(r.read_s for r in readers), time.thread_time()
        for i in range(n):
            items[i]
        result.append(1000.0 * (time.thread_time() - cpu - (sum(r.read_s for r in readers) - read)) / n)
    return result[0], result[1]
