"""What the work `bench_data.py`'s pipeline moved off its DataLoader workers, or avoided, costs on this machine: the
colour jitter and the crops' resize now done where the batch lands (`Batch.to`, `normalize_frames`), and the copy
into fresh shared memory that the reused hand-over slots avoid."""

from __future__ import annotations

import statistics
import time

import torch

from vidseg.data.clip_dataset import ClipDataset
from vidseg.model.backbone import normalize_frames


def colour_on_device_ms(ds: ClipDataset, repeats: int = 15) -> float:
    """CPU ms per clip of the device-side colour jitter: normalise with the clip's map minus without, each
    the fastest of `repeats` interleaved timings (the machine may be shared)."""
    sample = ds.collate([ds[0]]).to("cpu").samples[0]  # frames finished as on the device
    frames, t = sample.frames, sample.frames.shape[0]
    if sample.colour is None:
        return 0.0
    colour, valid = sample.colour.expand(t, 3, 4), sample.pad_mask.expand(t, *sample.pad_mask.shape)
    variants = {"plain": {}, "colour": {"colour": colour, "valid": valid}}
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(repeats):
        for name, kw in variants.items():
            start = time.perf_counter()
            normalize_frames(frames, **kw)
            best[name] = min(best[name], time.perf_counter() - start)
    return 1000.0 * (best["colour"] - best["plain"])


def resize_on_device_ms(ds: ClipDataset, repeats: int = 15) -> float:
    """CPU ms per clip of `Batch.to` finishing a one-clip batch (frames flipped, resized and padded, masks painted)
    on *this CPU*, the fastest of `repeats` (0 with --no-device-resize: the workers did it)."""
    batch = ds.collate([ds[0]])
    if batch.device_resize is None:
        return 0.0
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        batch.to("cpu")
        best = min(best, time.perf_counter() - start)
    return 1000.0 * best


def handover_copy_ms(nbytes: int = 6_000_000, repeats: int = 30) -> dict[str, float]:
    """CPU ms to copy `nbytes` into fresh shared memory (torch's usual hand-over allocates a new file per batch)
    against into shared memory already mapped and touched (a reused `SlotHandover` slot), medians of `repeats`."""
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8)
    slot = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(nbytes))
    slot.copy_(src)
    times: dict[str, list[float]] = {"fresh_shared": [], "reused_slot": []}
    for _ in range(repeats):
        start = time.process_time()
        fresh = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(nbytes))
        fresh.copy_(src)
        times["fresh_shared"].append(time.process_time() - start)
        del fresh
        start = time.process_time()
        slot.copy_(src)
        times["reused_slot"].append(time.process_time() - start)
    return {k: 1000.0 * statistics.median(v) for k, v in times.items()}
