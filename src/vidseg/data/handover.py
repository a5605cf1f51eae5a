"""Handing batches from DataLoader workers to the main process through reused shared-memory slots.

Torch's DataLoader moves each tensor of a worker's batch into a fresh shared-memory file, and every page of that
file is a page fault the first time the worker writes it. On the 2-core VM, copying 6 MB into fresh shared memory
cost 4.8-5.1 ms of CPU against 0.6-0.8 ms into memory already mapped (`scripts/bench_data.py`,
`handover_copy_6mb_ms`), a third of decoding the clip's JPEGs; each small tensor (ids, points, colour map) also
costs a file of its own.

`SlotHandover` wraps a collate function. Its `SlotPool` is mapped once, by the process that builds the
DataLoader, before the workers start (forked workers inherit it; spawned ones receive it as torch sends shared
storages). Torch reserves the whole pool up front (fallocate), so it costs workers x slots x slot size of shared
memory; if that cannot be had, the handover warns and leaves batches to torch. Each worker owns `slots_per_worker`
fixed slots. A worker collates straight into one of its free slots (`collate.stack_for_handover` allocates there;
every other tensor is copied in after) and sends only the layout. The receiving process rebuilds the batch as views
of the slot, and the slot becomes free again when the last of those tensors is freed (a finalizer on the slot's
lease). When a worker has no free slot, the batch goes torch's usual way, as does any tensor that does not fit in
what is left of the slot: the hand-over never waits and never overwrites a tensor that is still in use. Slots left
busy by batches that were never received (an iterator dropped mid-epoch) stay busy, so those workers fall back for
good rather than risk it.

The layout is the batch pickled with each tensor replaced by where it lies in the slot; a tensor of at most 1 kB
outside the slot travels by value instead (its copy and view would cost more). The collate's result can be anything
picklable. Limit: one `SlotHandover` serves one DataLoader: a worker slot already claimed by another live process is
not used.
"""

from __future__ import annotations

import io
import multiprocessing.context
import os
import pickle
import threading
import uuid
import warnings
import weakref
from collections.abc import Callable
from multiprocessing.reduction import ForkingPickler
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import get_worker_info

__all__ = ["SlotHandover", "SlotPool", "current_slot_writer"]

_ALIGN = 64  # bytes; keeps every tensor aligned for any dtype
_INLINE_BYTES = 1024  # tensors up to this size travel by value in the layout (InlineTensor)
_POOLS: weakref.WeakValueDictionary[str, SlotPool] = weakref.WeakValueDictionary()
_ACTIVE = threading.local()  # the slot a worker's collate call is filling
_RECEIVING = threading.local()  # the lease of the batch being unpickled


class SlotPool:
    """`workers` × `slots_per_worker` slots of `slot_bytes` each in one shared-memory mapping (reserved up front),
    plus a busy flag per slot (set by the worker that fills it, cleared by the receiving process when the batch is
    freed), the process id that owns each worker's slots, and per-worker counters of batches sent through slots and
    the usual way (a last row for worker ids beyond `workers`)."""

    def __init__(self, workers: int, slots_per_worker: int, slot_bytes: int) -> None:
        for name, value in (("workers", workers), ("slots_per_worker", slots_per_worker),
                            ("slot_bytes", slot_bytes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SlotPool: {name} must be a positive int, got {value!r}")
        self.workers, self.slots_per_worker = workers, slots_per_worker
        self.slot_bytes = -(-slot_bytes // _ALIGN) * _ALIGN
        n = workers * slots_per_worker
        self.storage = torch.UntypedStorage._new_shared(n * self.slot_bytes)
        self.busy = torch.zeros(n, dtype=torch.int32).share_memory_()
        self.owners = torch.zeros(workers, dtype=torch.int64).share_memory_()  # pid filling each worker's slots
        # per worker: [batches through a slot, batches the usual way]
        self.counts = torch.zeros(workers + 1, 2, dtype=torch.int64).share_memory_()
        self.key = uuid.uuid4().hex
        self._views: dict[str, np.ndarray] = {}
        _POOLS[self.key] = self

    def __getstate__(self) -> dict[str, Any]:
        if multiprocessing.context.get_spawning_popen() is None:  # a plain pickle/deepcopy would copy the pool
            raise TypeError("a SlotPool can only be sent to the DataLoader worker processes it serves")
        state = dict(self.__dict__)  # spawned workers: torch sends the shared storages, not their bytes
        state["_views"] = {}
        return state

    def _view(self, name: str) -> np.ndarray:
        view = self._views.get(name)
        if view is None:
            source = getattr(self, name)
            if name == "storage":
                source = torch.empty(0, dtype=torch.uint8).set_(source)
            view = self._views[name] = source.numpy()
        return view

    @property
    def slots_sent(self) -> int:
        """Batches handed over through a slot so far (all workers)."""
        return int(self.counts[:, 0].sum())

    @property
    def fallbacks(self) -> int:
        """Batches that went torch's usual way because their worker had no free slot (a tensor that does not fit in
        its batch's slot also goes that way, but its batch counts as sent through the slot)."""
        return int(self.counts[:, 1].sum())

    def busy_slots(self) -> int:
        """Slots whose batch is still alive (or was never received)."""
        return int(self.busy.sum())

    def acquire(self, worker: int) -> int | None:
        """A free slot of `worker` (now marked busy), or None when all of its slots are in use, `worker` is beyond
        the pool, or another live process owns that worker's slots (a second DataLoader on this pool)."""
        if not 0 <= worker < self.workers or not self._own(worker):
            return None
        busy = self._view("busy")
        first = worker * self.slots_per_worker
        for slot in range(first, first + self.slots_per_worker):
            if busy[slot] == 0:
                busy[slot] = 1
                return slot
        return None

    def _own(self, worker: int) -> bool:
        owners, me = self._view("owners"), os.getpid()
        owner = int(owners[worker])
        if owner != me:
            if owner and _alive(owner):
                return False
            owners[worker] = me
        return True

    def count(self, worker: int, through_slot: bool) -> None:
        self._view("counts")[min(worker, self.workers), 0 if through_slot else 1] += 1

    def release(self, slot: int) -> None:
        self._view("busy")[slot] = 0

    def slot_tensor(self, slot: int, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                    dtype: torch.dtype) -> torch.Tensor:
        """A tensor over bytes [offset, ...) of `slot` (the writing side)."""
        item = dtype.itemsize
        return torch.empty(0, dtype=dtype).set_(self.storage, (slot * self.slot_bytes + offset) // item, size, stride)

    def lease(self, slot: int) -> torch.UntypedStorage:
        """The bytes of `slot` as a storage that frees the slot when the last tensor over it is freed."""
        start = slot * self.slot_bytes
        lease = self._view("storage")[start:start + self.slot_bytes]  # a new array object per lease
        weakref.finalize(lease, _clear_flag, self._view("busy"), slot)
        return torch.from_numpy(lease).untyped_storage()


def _clear_flag(busy: np.ndarray, slot: int) -> None:
    busy[slot] = 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SlotTensor(NamedTuple):
    """Where one tensor of a batch lies in its slot."""

    offset: int  # bytes from the slot's start
    size: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype


class SlotWriter:
    """Bump allocation inside one slot, for the collate call that fills it."""

    def __init__(self, pool: SlotPool, slot: int) -> None:
        self.pool, self.slot, self.used = pool, slot, 0
        self._start = slot * pool.slot_bytes
        self._ptr = pool.storage.data_ptr()

    def empty_strided(self, size: tuple[int, ...], stride: tuple[int, ...],
                      dtype: torch.dtype) -> torch.Tensor | None:
        """An uninitialised tensor in the slot, or None when it does not fit."""
        item = dtype.itemsize
        extent = 0 if 0 in size else item * (1 + sum((n - 1) * s for n, s in zip(size, stride, strict=True)))
        offset = -(-self.used // _ALIGN) * _ALIGN
        if offset + extent > self.pool.slot_bytes:
            return None
        self.used = offset + extent
        return self.pool.slot_tensor(self.slot, offset, tuple(size), tuple(stride), dtype)

    def place(self, t: torch.Tensor) -> SlotTensor | InlineTensor | torch.Tensor:
        """`t`'s place in the slot: where it already lies, or a copy made there; a tensor of at most
        `_INLINE_BYTES` outside the slot travels by value inside the layout instead (`InlineTensor`: a copy into
        the slot plus its view on the other side cost more than the bytes); `t` itself when it does not fit (it
        then goes torch's usual way)."""
        if t.device.type != "cpu" or t.requires_grad:
            return t
        item = t.element_size()
        start = t.untyped_storage().data_ptr() + t.storage_offset() * item - self._ptr - self._start
        if t.untyped_storage().data_ptr() == self._ptr and 0 <= start < self.pool.slot_bytes:
            return SlotTensor(start, tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() * item <= _INLINE_BYTES:
            return InlineTensor(_tensor_bytes(t), tuple(t.shape), t.dtype)
        stride = tuple(t.stride()) if _dense(t) else torch.empty(t.shape, device="meta").stride()
        dest = self.empty_strided(tuple(t.shape), stride, t.dtype)
        if dest is None:
            return t
        dest.copy_(t)
        return SlotTensor(dest.storage_offset() * item - self._start, tuple(t.shape), stride, t.dtype)

    def pack(self, obj: Any) -> bytes:
        """`obj` pickled with each of its tensors placed (`place`): in the slot, by value, or torch's usual way."""
        buffer = io.BytesIO()
        _LayoutPickler(buffer, self).dump(obj)
        return buffer.getvalue()


class InlineTensor(NamedTuple):
    """A small tensor carried by value in a batch's layout: its elements in row-major order."""

    data: bytes
    size: tuple[int, ...]
    dtype: torch.dtype

    def tensor(self) -> torch.Tensor:
        if not self.data:
            return torch.empty(self.size, dtype=self.dtype)
        return torch.frombuffer(bytearray(self.data), dtype=self.dtype).view(self.size)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    """`t`'s elements in row-major order as bytes."""
    try:
        return t.numpy().tobytes()
    except (TypeError, RuntimeError):  # dtypes numpy lacks (bfloat16), conjugate/negative views
        return t.resolve_conj().resolve_neg().contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def _dense(t: torch.Tensor) -> bool:
    """Whether `t`'s elements fill their extent exactly once (any order of dimensions)."""
    dims = sorted((s, n) for n, s in zip(t.shape, t.stride(), strict=True) if n > 1)
    expected = 1
    for s, n in dims:
        if s != expected:
            return False
        expected *= n
    return True


def current_slot_writer() -> SlotWriter | None:
    """The slot this worker's collate call is filling, if any (`collate.stack_for_handover` stacks into it)."""
    return getattr(_ACTIVE, "writer", None)


class _LayoutPickler(ForkingPickler):
    """Pickles a batch with each tensor replaced by its place in the slot or by its bytes (`SlotWriter.place`);
    tensors that fit nowhere go torch's usual way (the DataLoader's pickler reductions: shared memory)."""

    def __init__(self, file: io.BytesIO, writer: SlotWriter) -> None:
        super().__init__(file, pickle.HIGHEST_PROTOCOL)
        self.writer = writer

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            placed = self.writer.place(obj)
            if type(placed) is SlotTensor:
                return _slot_view, tuple(placed)
            if type(placed) is InlineTensor:
                return _inline_tensor, tuple(placed)
        return NotImplemented


def _slot_view(offset: int, size: tuple[int, ...], stride: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    lease = getattr(_RECEIVING, "lease", None)
    if lease is None:
        raise RuntimeError("a tensor of a hand-over slot can only be rebuilt by receive_slot_batch")
    return torch.empty(0, dtype=dtype).set_(lease, offset // dtype.itemsize, size, stride)


def _inline_tensor(data: bytes, size: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return InlineTensor(data, size, dtype).tensor()


class SlotBatch:
    """What a worker sends for a batch in a slot: the pool's key, the slot, and the batch pickled with each tensor
    replaced by its place in the slot (`SlotWriter.pack`). Unpickling it in the receiving process gives the batch
    back."""

    def __init__(self, key: str, slot: int, layout: bytes) -> None:
        self.key, self.slot, self.layout = key, slot, layout

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return receive_slot_batch, (self.key, self.slot, self.layout)


def receive_slot_batch(key: str, slot: int, layout: bytes) -> Any:
    """Rebuild a batch from its slot, as views of a lease that frees the slot once they are all freed."""
    pool = _POOLS.get(key)
    if pool is None:
        raise RuntimeError(f"a batch in shared-memory slot {slot} of handover pool {key} reached process "
                           f"{os.getpid()}, which does not hold that pool: a SlotHandover batch can only be "
                           "received by the process that built its DataLoader")
    outer = getattr(_RECEIVING, "lease", None)
    _RECEIVING.lease = pool.lease(slot)
    try:
        return pickle.loads(layout)
    finally:
        _RECEIVING.lease = outer


class SlotHandover:
    """A collate function that hands its batches over through a `SlotPool` when run in a DataLoader worker (and
    is `collate_fn` itself in the main process). `slots_per_worker` should cover the DataLoader's
    `prefetch_factor` plus the batches the consumer holds at once; beyond that, batches go the usual way. When the
    pool's shared memory cannot be reserved, it warns and every batch goes the usual way (`pool` is None)."""

    def __init__(self, collate_fn: Callable[[list[Any]], Any], workers: int, slots_per_worker: int = 4,
                 slot_mb: float = 16.0) -> None:
        if isinstance(slot_mb, bool) or not slot_mb > 0:
            raise ValueError(f"SlotHandover: slot_mb must be positive, got {slot_mb!r}")
        self.collate_fn = collate_fn
        self.pool: SlotPool | None = None
        try:
            self.pool = SlotPool(workers, slots_per_worker, int(slot_mb * 2**20))
        except RuntimeError as e:  # e.g. /dev/shm too small for the reservation
            warnings.warn(f"SlotHandover: no shared-memory pool of {workers} x {slots_per_worker} x {slot_mb} MiB "
                          f"({e}); batches go torch's usual way", RuntimeWarning, stacklevel=2)

    def __call__(self, samples: list[Any]) -> Any:
        info = get_worker_info()
        if info is None or self.pool is None:
            return self.collate_fn(samples)
        slot = self.pool.acquire(info.id)
        if slot is None:
            self.pool.count(info.id, through_slot=False)
            return self.collate_fn(samples)
        writer = SlotWriter(self.pool, slot)
        _ACTIVE.writer = writer
        try:
            batch = self.collate_fn(samples)
            layout = writer.pack(batch)
        except BaseException:
            self.pool.release(slot)
            raise
        finally:
            _ACTIVE.writer = None
        self.pool.count(info.id, through_slot=True)
        return SlotBatch(self.pool.key, slot, layout)
