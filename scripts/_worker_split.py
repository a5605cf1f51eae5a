"""Where a DataLoader worker's CPU time goes, clip by clip (`bench_data.py --worker-split`).

Each worker adds the CPU time of its own thread spent reading frames (the dataset's reader), in the rest of each
item, stacking the frames and pad masks into the batch (`collate.stack_for_handover`: in a worker, the copy into
the hand-over slot) and in the rest of the collate call (the hand-over's layout included) to a shared-memory
table, with its thread's and its process's CPU time so far. What the thread spent outside items and collate is
the DataLoader's loop (index queue, result queue); what the process spent outside the thread is its other threads
(the result queue's feeder, which sends each batch). It adds two clock reads and a few tensor updates, some
microseconds, per call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import get_worker_info

from vidseg.data import collate
from vidseg.data.clip_dataset import ClipDataset

FIELDS = ("read", "item_other", "stacking", "collate_handover_other", "loop", "other_threads")
_READ, _ITEM, _COLLATE, _THREAD, _PROCESS, _CLIPS, _STACK = range(7)


class WorkerSplit:
    """A worker_init_fn and collate wrapper that fill `table` (float64 [workers, 7], shared memory)."""

    def __init__(self, workers: int, init_fn: Callable[[int], None] | None = None) -> None:
        self.table = torch.zeros(workers, 7, dtype=torch.float64).share_memory_()
        self.init_fn = init_fn
        self._start = (0.0, 0.0)

    def worker_init(self, worker_id: int) -> None:
        if self.init_fn is not None:
            self.init_fn(worker_id)
        info = get_worker_info()
        dataset = info.dataset
        while not isinstance(dataset, ClipDataset):  # Subset(s) of a ClipDataset
            dataset = dataset.dataset
        row = self.table[worker_id]
        items = type(dataset)
        plain_item, plain_reader = items.__getitem__, dataset._reader

        def timed_item(ds: ClipDataset, index: int) -> Any:
            start = time.thread_time()
            try:
                return plain_item(ds, index)
            finally:
                row[_ITEM] += time.thread_time() - start

        def timed_reader(*args: Any) -> Any:
            reader = plain_reader(*args)
            return _TimedReader(reader, row)

        plain_stack = collate.stack_for_handover

        def timed_stack(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return plain_stack(*args, **kwargs)
            finally:
                row[_STACK] += time.thread_time() - start

        items.__getitem__ = timed_item  # this worker's copy of the class and module (forked)
        dataset._reader = timed_reader
        collate.stack_for_handover = timed_stack
        self._start = (time.thread_time(), time.process_time())

    def collate(self, collate_fn: Callable[[list[Any]], Any]) -> Callable[[list[Any]], Any]:
        def timed(samples: list[Any]) -> Any:
            start = time.thread_time()
            try:
                return collate_fn(samples)
            finally:
                info = get_worker_info()
                if info is not None:
                    row = self.table[info.id]
                    now = time.thread_time()
                    row[_COLLATE] += now - start
                    row[_THREAD] = now - self._start[0]
                    row[_PROCESS] = time.process_time() - self._start[1]
                    row[_CLIPS] += len(samples)

        return timed

    def ms_per_clip(self) -> dict[str, float]:
        """The split of all workers' CPU time, ms per clip (after their start-up)."""
        t = self.table.sum(0).tolist()
        clips = max(t[_CLIPS], 1.0)
        parts = (t[_READ], t[_ITEM] - t[_READ], t[_STACK], t[_COLLATE] - t[_STACK], t[_THREAD] - t[_ITEM] - t[_COLLATE],
                 t[_PROCESS] - t[_THREAD])
        return {name: 1000.0 * v / clips for name, v in zip(FIELDS, parts, strict=True)}


class _TimedReader:
    def __init__(self, reader: Any, row: torch.Tensor) -> None:
        self.reader, self.row = reader, row

    def read(self, indices: Any) -> Any:
        start = time.thread_time()
        try:
            return self.reader.read(indices)
        finally:
            self.row[_READ] += time.thread_time() - start

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reader, name)
