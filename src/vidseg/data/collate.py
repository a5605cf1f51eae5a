"""Batching training clips: pad to the batch's largest frame, stack, and hand over to the main process cheaply.

Inside a DataLoader worker the stacked frames and pad masks are allocated in shared memory (as torch's
`default_collate` does), and each sample's `frames` / `pad_mask` become views of them, so the hand-over to the
main process moves every pixel once: before, the batch tensor and the per-sample tensors were each copied into
shared memory when the worker pickled the batch (8.6 MB per 480p 3-frame clip instead of 4.8 MB).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch.utils.data import get_worker_info

from vidseg.data.handover import current_slot_writer
from vidseg.data.records import IGNORE_LABEL, PAD_VALUE, Batch, ClipSample, ClipSamplingError

__all__ = ["collate_clips", "stack_for_handover"]


def _pad_to(x: torch.Tensor, h: int, w: int, value: float | bool) -> torch.Tensor:
    ph, pw = h - x.shape[-2], w - x.shape[-1]
    if ph == 0 and pw == 0:
        return x
    out = x.new_full((*x.shape[:-2], h, w), value)
    out[..., : x.shape[-2], : x.shape[-1]] = x
    return out


def collate_clips(samples: Sequence[ClipSample], task: str) -> Batch:
    """Pad clips bottom/right to the largest H, W of the batch (frames with PAD_VALUE, masks False,
    semantic IGNORE_LABEL, pad_mask False) and stack frames and colour maps (identity for a clip without one;
    None when no clip has one); targets stay per sample (their N differ)."""
    if not samples:
        raise ClipSamplingError("collate_clips: empty list of samples")
    datasets = {s.dataset for s in samples}
    if len(datasets) != 1:
        raise ClipSamplingError(f"collate_clips: one dataset per batch expected, got {sorted(datasets)}")
    lengths = {s.frames.shape[0] for s in samples}
    if len(lengths) != 1:
        raise ClipSamplingError(f"collate_clips: clips of different lengths {sorted(lengths)} in one batch")
    deferred = {s.device_resize is not None for s in samples}
    if len(deferred) != 1:
        raise ClipSamplingError("collate_clips: clips with and without device_resize in one batch")
    h = max(s.pad_mask.shape[-2] for s in samples)
    w = max(s.pad_mask.shape[-1] for s in samples)
    fh = max(s.frames.shape[-2] for s in samples)  # crops (device_resize): their own size; else (h, w)
    fw = max(s.frames.shape[-1] for s in samples)
    padded = []
    for s in samples:  # (frames are padded while stacked)
        if s.pad_mask.shape[-2:] != (h, w):  # (masks still as rectangles are painted at the batch's size)
            s = replace(s, masks=s.masks if s.mask_rects is not None else _pad_to(s.masks, h, w, False),
                        pad_mask=_pad_to(s.pad_mask, h, w, False),
                        semantic=None if s.semantic is None else _pad_to(s.semantic, h, w, IGNORE_LABEL))
        padded.append(s)
    device_resize = None
    if True in deferred:
        device_resize = torch.tensor([[int(v) for v in s.device_resize] for s in padded], dtype=torch.int64)
    colour = None
    if any(s.colour is not None for s in padded):  # clips without a colour map get the identity
        identity = torch.eye(3, 4, dtype=torch.float32)
        colour = torch.stack([identity if s.colour is None else s.colour.to(torch.float32) for s in padded])
    frames = stack_for_handover([s.frames for s in padded], pad_to=(fh, fw), fill=PAD_VALUE)
    pad_mask = stack_for_handover([s.pad_mask for s in padded])
    samples = [replace(s, frames=frames[i], pad_mask=pad_mask[i]) for i, s in enumerate(padded)]
    return Batch(task=task, dataset=padded[0].dataset, frames=frames, pad_mask=pad_mask, samples=samples,
                 colour=colour, device_resize=device_resize)


def stack_for_handover(tensors: Sequence[torch.Tensor], pad_to: tuple[int, int] | None = None,
                       fill: float = 0) -> torch.Tensor:
    """`torch.stack(tensors)`, keeping the memory layout of inputs of one layout (decoded frames are HWC memory
    viewed as CHW, crops are views of them: a contiguous stack would be a strided copy, twice the cost of a plain
    copy at 480p); `pad_to` (H, W): smaller inputs are padded bottom/right with `fill` as they are copied. In a
    DataLoader worker the result is allocated in shared memory, so pickling it for the main process does not copy
    it again; inside a `handover.SlotHandover` collate call it goes straight into the worker's hand-over slot."""
    first, n = tensors[0], len(tensors)
    item = tuple(first.shape) if pad_to is None else (*first.shape[:-2], *pad_to)
    if not all(t.shape[:-2] == first.shape[:-2] and t.shape[-2] <= item[-2] and t.shape[-1] <= item[-1]
               and (pad_to is not None or t.shape == first.shape) for t in tensors):
        return torch.stack(list(tensors))  # torch.stack's error message
    shared = get_worker_info() is not None
    size, numel = (n, *item), math.prod(item)
    if all(t.stride() == first.stride() for t in tensors):
        # dense: the same strides; views (e.g. crops of decoded frames): their dense order (channels-last)
        dense = item == tuple(first.shape) and all(_dense(t) for t in tensors)
        stride = (numel, *(first.stride() if dense else _strides_in_order(item, first.stride())))
    else:  # mixed layouts
        stride = torch.empty(size, device="meta").stride()
    writer = current_slot_writer() if shared and first.device.type == "cpu" else None
    out = None if writer is None else writer.empty_strided(size, stride, first.dtype)  # the hand-over slot
    if out is None and shared:
        flat = first.new(first._typed_storage()._new_shared(n * numel, device=first.device))
        out = flat.as_strided(size, stride)
    elif out is None:
        out = torch.empty_strided(size, stride, dtype=first.dtype, device=first.device)
    for k, t in enumerate(tensors):
        h, w = t.shape[-2:]
        if (h, w) != item[-2:]:
            out[k, ..., h:, :].fill_(fill)
            out[k, ..., :h, w:].fill_(fill)
        out[k, ..., :h, :w].copy_(t)
    return out


def _strides_in_order(shape: tuple[int, ...], like: tuple[int, ...]) -> tuple[int, ...]:
    """Dense strides for `shape` with its dimensions ordered in memory as strides `like` order them."""
    stride, step = [0] * len(shape), 1
    for d in sorted(range(len(shape)), key=lambda i: (like[i], -i)):
        stride[d] = step
        step *= shape[d]
    return tuple(stride)


def _dense(t: torch.Tensor) -> bool:
    """Whether `t` covers exactly its own storage (any order of dimensions, no gaps, no overlap)."""
    return t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size()
