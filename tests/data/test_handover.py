"""Hand-over through reused shared-memory slots (`vidseg.data.handover`): batches received from workers equal the
in-process collate (values, layouts, views), live in the pool, free their slot when freed, are never overwritten
while held (workers fall back instead), batches too large for a slot go torch's way, spawned workers work, and
bad options or a batch received by the wrong process are clear errors."""

from __future__ import annotations

import functools
import gc
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from vidseg.data.collate import collate_clips
from vidseg.data.handover import InlineTensor, SlotBatch, SlotHandover, SlotPool, SlotTensor, SlotWriter
from vidseg.data.records import Batch, ClipSample


def clip(seed: int, h: int = 24, w: int = 32, n: int = 2) -> ClipSample:
    g = np.random.default_rng(seed)
    frames = torch.from_numpy(g.integers(0, 256, (3, h, w, 3), dtype=np.uint8)).permute(0, 3, 1, 2)
    return ClipSample(frames=frames, masks=torch.from_numpy(g.random((n, 3, h, w)) > 0.5),
                      track_ids=torch.arange(1, n + 1), class_ids=torch.tensor([seed % 3, 1])[:n],
                      pad_mask=torch.ones(h, w, dtype=torch.bool),
                      points=torch.from_numpy(g.random((n, 2), np.float32)), dataset="d", video_id=f"v{seed}",
                      colour=torch.eye(3, 4) * (1 + seed), frame_indices=[seed, seed + 1])


class Clips(Dataset):
    def __init__(self, n: int = 8, size: int = 24) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> ClipSample:
        return clip(i, h=self.size if i % 2 else self.size - 4, w=self.size + 8)


collate_vos = functools.partial(collate_clips, task="vos")


def assert_same_batch(got: Batch, want: Batch) -> None:
    assert got.task == want.task and got.dataset == want.dataset
    assert torch.equal(got.frames, want.frames) and got.frames.stride() == want.frames.stride()
    assert torch.equal(got.pad_mask, want.pad_mask) and torch.equal(got.colour, want.colour)
    for g, w in zip(got.samples, want.samples, strict=True):
        for name in ("frames", "masks", "track_ids", "class_ids", "pad_mask", "points", "colour"):
            a, b = getattr(g, name), getattr(w, name)
            assert a.dtype == b.dtype and torch.equal(a, b), name
        assert (g.video_id, g.frame_indices) == (w.video_id, w.frame_indices)


def in_pool(t: torch.Tensor, pool: SlotPool) -> bool:
    start = pool.storage.data_ptr()
    return start <= t.data_ptr() < start + pool.storage.nbytes()


def test_worker_batches_come_through_slots_and_equal_the_in_process_collate() -> None:
    data = Clips()
    handover = SlotHandover(collate_vos, workers=2, slots_per_worker=4, slot_mb=1)
    loader = DataLoader(data, batch_size=2, num_workers=2, collate_fn=handover)
    for k, got in enumerate(loader):
        assert_same_batch(got, collate_vos([data[2 * k], data[2 * k + 1]]))
        assert in_pool(got.frames, handover.pool) and in_pool(got.samples[1].masks, handover.pool)
        for i, s in enumerate(got.samples):  # views of the batch, as in the worker
            assert s.frames.data_ptr() == got.frames[i].data_ptr()
            assert s.pad_mask.data_ptr() == got.pad_mask[i].data_ptr()
    assert k == 3
    del got, s
    gc.collect()
    assert (handover.pool.slots_sent, handover.pool.fallbacks, handover.pool.busy_slots()) == (4, 0, 0)


def test_a_slot_stays_busy_while_any_tensor_of_its_batch_lives() -> None:
    handover = SlotHandover(collate_vos, workers=1, slots_per_worker=2, slot_mb=1)
    loader = DataLoader(Clips(2), batch_size=2, num_workers=1, collate_fn=handover)
    batch = next(iter(loader))
    masks = batch.samples[0].masks
    del batch
    gc.collect()
    assert handover.pool.busy_slots() == 1  # `masks` still views the slot
    del masks
    gc.collect()
    assert handover.pool.busy_slots() == 0


def test_held_batches_are_never_overwritten_workers_fall_back_instead() -> None:
    data = Clips(12)
    handover = SlotHandover(collate_vos, workers=2, slots_per_worker=1, slot_mb=1)
    held = list(DataLoader(data, batch_size=1, num_workers=2, collate_fn=handover))
    for k, got in enumerate(held):
        assert_same_batch(got, collate_vos([data[k]]))
    pool = handover.pool
    assert pool.slots_sent == 2 and pool.fallbacks == 10 and pool.busy_slots() == 2
    assert sum(in_pool(b.frames, pool) for b in held) == 2


def test_a_batch_larger_than_its_slot_goes_torchs_way() -> None:
    data = Clips(4, size=64)  # 3 x 3 x 64 x 72 frames: 41 kB, the slot holds 16 kB
    handover = SlotHandover(collate_vos, workers=1, slots_per_worker=4, slot_mb=16 / 1024)
    for k, got in enumerate(DataLoader(data, batch_size=1, num_workers=1, collate_fn=handover)):
        assert_same_batch(got, collate_vos([data[k]]))
        assert not in_pool(got.frames, handover.pool) and in_pool(got.pad_mask, handover.pool)


def test_spawned_workers_receive_the_pool() -> None:
    data = Clips(4)
    handover = SlotHandover(collate_vos, workers=1, slots_per_worker=2, slot_mb=1)
    loader = DataLoader(data, batch_size=2, num_workers=1, collate_fn=handover, multiprocessing_context="spawn")
    for k, got in enumerate(loader):
        assert_same_batch(got, collate_vos([data[2 * k], data[2 * k + 1]]))
        assert in_pool(got.frames, handover.pool)
    assert handover.pool.slots_sent == 2


def test_in_the_main_process_it_is_the_plain_collate() -> None:
    data = Clips(2)
    handover = SlotHandover(collate_vos, workers=2)
    got = next(iter(DataLoader(data, batch_size=2, num_workers=0, collate_fn=handover)))
    assert isinstance(got, Batch) and not in_pool(got.frames, handover.pool)
    assert_same_batch(got, collate_vos([data[0], data[1]]))
    assert handover.pool.slots_sent == handover.pool.fallbacks == 0


def test_writer_copies_keep_dense_layouts_and_record_tensors_already_in_the_slot() -> None:
    pool = SlotPool(1, 1, 8192)
    writer = SlotWriter(pool, 0)
    # larger than what travels by value (1 kB)
    hwc = (torch.arange(2 * 12 * 16 * 3) % 251).to(torch.uint8).view(2, 12, 16, 3).permute(0, 3, 1, 2)
    strided = torch.arange(600, dtype=torch.float32)[::2]
    placed = [writer.place(t) for t in (hwc, strided)]
    assert placed[0].stride == hwc.stride() and placed[1].stride == (1,)  # kept / made contiguous
    assert all(p.offset % 64 == 0 for p in placed) and placed[1].offset >= hwc.numel()
    inside = writer.empty_strided((5,), (1,), torch.int64)
    assert writer.place(inside[1:]) == SlotTensor(placed[1].offset + 1216 + 8, (4,), (1,), torch.int64)
    assert writer.empty_strided((8192,), (1,), torch.uint8) is None  # no room left
    used = writer.used
    rebuilt = pickle.loads(pickle.dumps(SlotBatch(pool.key, 0, writer.pack({"a": hwc, "b": [strided, inside[1:]]}))))
    assert used == 2408 and writer.used == 2432 + 1152 + 1200  # hwc and strided copied again, inside[1:] not
    assert torch.equal(rebuilt["a"], hwc) and torch.equal(rebuilt["b"][0], strided)
    assert rebuilt["a"].stride() == hwc.stride() and all(in_pool(t, pool) for t in (rebuilt["a"], *rebuilt["b"]))
    assert torch.equal(rebuilt["b"][1], inside[1:])


def test_small_tensors_travel_by_value_and_come_back_equal() -> None:
    pool = SlotPool(1, 1, 4096)
    writer = SlotWriter(pool, 0)
    small = {
        "ids": torch.arange(5),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros((3, 2, 0, 0), dtype=torch.bool),
        "strided": torch.arange(24, dtype=torch.int32).view(4, 6)[:, ::2],
        "transposed": torch.arange(12, dtype=torch.float32).view(3, 4).t(),
        "bf16": torch.linspace(-1, 1, 7, dtype=torch.bfloat16),
        "edge": torch.arange(256, dtype=torch.float32),  # exactly 1024 bytes
    }
    placed = {k: writer.place(t) for k, t in small.items()}
    assert all(isinstance(p, InlineTensor) for p in placed.values()) and writer.used == 0
    big = torch.arange(257, dtype=torch.float32)  # 1028 bytes: into the slot
    assert isinstance(writer.place(big), SlotTensor)
    in_slot = writer.empty_strided((2,), (1,), torch.int64)  # tiny but already in the slot: stays a view there
    assert isinstance(writer.place(in_slot), SlotTensor)
    back = pickle.loads(pickle.dumps(SlotBatch(pool.key, 0, writer.pack(small))))
    for k, t in small.items():
        got = back[k]
        assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t), k
        assert not in_pool(got, pool) and got.is_contiguous()
    back["ids"][0] = 7  # writable, and its own memory
    assert small["ids"][0] == 0


def test_a_slot_batch_received_by_another_process_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="slot 3 of handover pool nokey.*does not hold that pool"):
        pickle.loads(pickle.dumps(SlotBatch("nokey", 3, pickle.dumps([]))))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"workers": 0}, "workers must be a positive int"),
    ({"slots_per_worker": 0}, "slots_per_worker must be a positive int"),
    ({"slot_mb": 0}, "slot_mb must be positive"),
])
def test_bad_pool_options_are_named(kwargs: dict, match: str) -> None:
    args = {"workers": 1, "slots_per_worker": 1, "slot_mb": 1.0} | kwargs
    with pytest.raises(ValueError, match=match):
        SlotHandover(collate_vos, **args)
    with pytest.raises(ValueError, match="slots_per_worker must be a positive int"):
        SlotHandover(collate_vos, workers=1, slots_per_worker=True)


def test_a_worker_slot_owned_by_another_live_process_is_not_used() -> None:
    import os
    import subprocess
    import sys

    pool = SlotPool(2, 1, 4096)
    pool.owners[0] = os.getppid()  # alive: e.g. a worker of a second DataLoader on the same pool
    assert pool.acquire(0) is None and pool.acquire(1) == 1 and int(pool.owners[1]) == os.getpid()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pool.owners[0] = int(dead.stdout)  # a worker that has exited: its successor takes the slots over
    assert pool.acquire(0) == 0 and int(pool.owners[0]) == os.getpid()


def test_the_pool_is_not_copied_by_plain_pickling() -> None:
    with pytest.raises(TypeError, match="only be sent to the DataLoader worker processes"):
        pickle.dumps(SlotPool(1, 1, 4096))


def test_without_shared_memory_for_the_pool_it_warns_and_leaves_batches_to_torch(monkeypatch) -> None:
    original = torch.UntypedStorage._new_shared

    def refuse_pools(size: int, **kw) -> torch.UntypedStorage:  # batches (< 1 MiB) still get shared memory
        if size >= 2**20:
            raise RuntimeError("unable to write to file </torch_1>: No space left on device (28)")
        return original(size, **kw)

    monkeypatch.setattr(torch.UntypedStorage, "_new_shared", refuse_pools)
    with pytest.warns(RuntimeWarning, match="No space left on device.*batches go torch's usual way"):
        handover = SlotHandover(collate_vos, workers=1, slots_per_worker=2, slot_mb=1)
    assert handover.pool is None
    data = Clips(2)
    got = next(iter(DataLoader(data, batch_size=2, num_workers=1, collate_fn=handover)))
    assert_same_batch(got, collate_vos([data[0], data[1]]))
