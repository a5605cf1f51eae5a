"""Per-frame (GT segment, predicted segment) pair tables for the panoptic metrics VPQ and STQ. Private to
`vidseg.metrics`.

One frame becomes a small table: for every (GT segment, predicted segment) pair that shares pixels, the GT
track slot and class index, the predicted instance id and class index, and the pixel count. Both metrics
work on these tables only, so every pixel is visited a fixed, small number of times per frame: a
vocabulary lookup per side (on uint8 ids where they fit), GT track masks pasted inside their bounding
boxes, and one bincount over a joint key of compact segment numbers.
"""

from __future__ import annotations

import numpy as np

from vidseg.data.records import AnnotationFormatError, FrameLabels
from vidseg.metrics._dense import (
    LANES,
    Scratch,
    TrackSlots,
    Vocabulary,
    cv2,
    id_range,
    pair_counts,
    pair_histogram,
)

_JOINT_LIMIT = 1 << 22  # largest instance id range compacted with a bincount (else np.unique)


def fast_index(vocab: Vocabulary, semantic: np.ndarray, where: str, scratch: Scratch, name: str) -> np.ndarray:
    """`vocab.index(semantic, where)` (void = C) into a reused buffer: for ids below 256 a byte copy and a
    256-entry lookup (cv2.LUT when available); unknown ids raise through `vocab.index`."""
    sem = np.asarray(semantic)
    top = id_range(sem)
    if top is None or top > len(vocab.lut) or top > 256 or vocab.dtype != np.uint8:
        out = vocab.index(sem, where)
        return out
    small = sem if sem.dtype == np.uint8 else scratch.get(name + "_u8", sem.shape, np.uint8)
    if small is not sem:
        np.copyto(small, sem, casting="unsafe")  # ids < 256
    lut = np.full(256, vocab.invalid, dtype=np.uint8)
    lut[: min(len(vocab.lut), 256)] = vocab.lut[:256]
    out = scratch.get(name, sem.shape, np.uint8)
    if cv2 is not None and small.ndim == 2:
        cv2.LUT(small, lut, dst=out)
    else:
        np.take(lut, small, out=out)
    if top > vocab.num_classes and (out == vocab.invalid).any():
        return vocab.index(sem, where)  # raises naming the id
    return out


def paint_slots(
    masks: dict[int, np.ndarray], slots: TrackSlots, shape: tuple[int, ...], where: str, scratch: Scratch
) -> tuple[np.ndarray, int]:
    """(uint8/uint16/int32 map of GT track slots (0 where no track; crowd tracks stay 0), an upper bound of the
    slots painted): each mask pasted with cv2.copyTo (else inside its bounding box), later masks winning as
    `inst[mask] = slot` does."""
    items = []
    for tid, mask in masks.items():
        if mask.shape != shape:
            raise AnnotationFormatError(f"{where}: GT track {tid} mask shape {mask.shape} != {shape}")
        if tid not in slots.crowd:
            items.append((slots.get(tid), mask))
    count = len(slots.slot)
    dtype = np.uint8 if count < 2**8 else np.uint16 if count < 2**16 else np.int32
    out = scratch.get("slots", shape, dtype)
    out.fill(0)
    top = 0
    for slot, mask in items:
        if cv2 is not None and mask.ndim == 2 and mask.dtype in (np.bool_, np.uint8) and mask.flags.c_contiguous:
            constant = scratch.get("slot_constant", shape, dtype)
            constant.fill(slot)
            cv2.copyTo(constant, mask.view(np.uint8), out)  # one pass over the mask, in place
        else:
            rows = np.flatnonzero(mask.any(axis=1))
            if len(rows) == 0:
                continue
            band = mask[rows[0] : rows[-1] + 1]
            cols = np.flatnonzero(band.any(axis=0))
            view = out[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            view[band[:, cols[0] : cols[-1] + 1].astype(bool)] = slot
        top = max(top, slot)
    return out, top


def _compact_instances(
    inst: np.ndarray, top: int, c1: int, num_g: int, scratch: Scratch
) -> tuple[np.ndarray, np.ndarray, type]:
    """(instance ids present, map of compact number * c1 per pixel, its dtype) of a 2-D instance map with
    ids in [0, top), top * LANES <= 2**16, with OpenCV.

    Which ids occur: one 1-D histogram over id * LANES + column % LANES (uint16; the lanes spread the
    increments of equal neighbours over separate bins, see `byte_pair_histogram`). The per-pixel lookup: on
    the low byte with cv2.LUT when the ids present differ there and the keys fit a byte, else np.take over the
    lane keys."""
    shape = inst.shape
    keyed = scratch.get("inst_keys", shape, np.uint16)
    np.multiply(inst, LANES, out=keyed, casting="unsafe")
    np.add(keyed, scratch.lane_pattern(shape, LANES, np.uint16), out=keyed)
    hist = cv2.calcHist([keyed], [0], None, [top * LANES], [0, top * LANES]).reshape(top, LANES)
    inst_ids = np.flatnonzero(hist.any(axis=1))
    codes = np.arange(len(inst_ids)) * c1
    key_type = _key_type(max(num_g, len(inst_ids) * c1))
    p_key = scratch.get("p_key", shape, key_type)
    low = inst_ids & 0xFF
    if key_type == np.uint8 and len(np.unique(low)) == len(low):
        low_bytes = scratch.get("inst_low", shape, np.uint8)
        np.copyto(low_bytes, inst, casting="unsafe")  # the low byte of each id
        lut = np.zeros(256, np.uint8)
        lut[low] = codes
        cv2.LUT(low_bytes, lut, dst=p_key)
    else:
        lut = np.zeros(top, key_type)
        lut[inst_ids] = codes
        np.take(np.repeat(lut, LANES), keyed, out=p_key)
    return inst_ids, p_key, key_type


def _key_type(num_keys: int) -> type:
    return np.uint8 if num_keys <= 256 else np.uint16 if num_keys <= 1 << 16 else np.int64


def segment_pairs(
    labels: FrameLabels,
    sem: np.ndarray,
    inst: np.ndarray,
    vocab: Vocabulary,
    slots: TrackSlots,
    where: str,
    scratch: Scratch | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(GT slot, GT class index, predicted instance id, predicted class index, pixel count) of every pair of
    GT and predicted segments sharing pixels in one frame (int64 arrays).

    GT: class = vocabulary index of `labels.semantic`, void (C) where IGNORE_LABEL or `labels.void`; slot =
    the track's slot (0 for stuff, crowd tracks and thing pixels without a track). Prediction: class index
    of `sem` (void allowed; such segments are void whatever their instance) and the raw instance id.
    `scratch` keeps the frame-sized work arrays between calls."""
    scratch = scratch or Scratch()
    if labels.semantic is None:
        raise AnnotationFormatError(f"{where}: GT has no semantic map (a panoptic/semantic format is needed)")
    g_cls = fast_index(vocab, labels.semantic, f"{where} (GT)", scratch, "g_cls")
    shape = g_cls.shape
    if labels.void is not None:
        if labels.void.shape != shape:
            raise AnnotationFormatError(f"{where}: GT void mask shape {labels.void.shape} != {shape}")
        outside = np.not_equal(g_cls, vocab.void, out=scratch.get("void", shape, bool))
        if np.logical_and(outside, labels.void, out=outside).any():
            g_cls = np.where(labels.void, vocab.void, g_cls).astype(g_cls.dtype)
    g_slot, top_slot = paint_slots(labels.masks, slots, shape, where, scratch)
    p_cls = fast_index(vocab, sem, f"{where} (prediction)", scratch, "p_cls")
    inst = np.asarray(inst)
    if inst.shape != p_cls.shape:
        raise AnnotationFormatError(f"{where}: instance map shape {inst.shape} != semantic {p_cls.shape}")
    if inst.dtype.kind not in "iu":
        raise AnnotationFormatError(f"{where}: instance map must be integer, got {inst.dtype}")
    top = id_range(inst)
    if top is None:
        raise AnnotationFormatError(f"{where}: negative predicted instance id {int(inst.min())}")
    c1 = vocab.num_classes + 1
    num_g = (top_slot + 1) * c1
    # compact instance numbers (their ids are arbitrary, e.g. 1000 * i + c): which ids occur, then one lookup
    # giving compact number * (C + 1), to which the class index is added
    if top * LANES <= 1 << 16 and cv2 is not None and inst.ndim == 2:
        inst_ids, p_key, key_type = _compact_instances(inst, top, c1, num_g, scratch)
    else:
        if top <= _JOINT_LIMIT:
            inst_ids = np.flatnonzero(np.bincount(inst.ravel(), minlength=top))
            inverse = None
        else:
            inst_ids, inverse = np.unique(inst, return_inverse=True)
        num_p = len(inst_ids) * c1
        key_type = _key_type(max(num_g, num_p))
        p_key = scratch.get("p_key", shape, key_type)
        if inverse is None:
            lut = np.zeros(top, dtype=key_type)
            lut[inst_ids] = np.arange(len(inst_ids)) * c1
            np.take(lut, inst, out=p_key)
        else:
            np.multiply(inverse.reshape(shape), c1, out=p_key, dtype=key_type, casting="unsafe")
    num_p = len(inst_ids) * c1
    np.add(p_key, p_cls, out=p_key, casting="unsafe")
    # the loop type is given: the slot map's small type would wrap around
    g_key = np.multiply(g_slot, c1, out=scratch.get("g_key", shape, key_type), dtype=key_type, casting="unsafe")
    np.add(g_key, g_cls, out=g_key, casting="unsafe")
    if num_g * num_p <= max(1 << 16, 4 * inst.size):
        counts = pair_histogram(g_key, p_key, num_g, num_p, scratch)
        g_u, p_u = np.nonzero(counts)
        cnt = counts[g_u, p_u]
    else:
        g_u, p_u, cnt = pair_counts(g_key.astype(np.int64), p_key.astype(np.int64))
    g_u, p_u = g_u.astype(np.int64), p_u.astype(np.int64)
    return g_u // c1, g_u % c1, inst_ids[p_u // c1].astype(np.int64), p_u % c1, cnt.astype(np.int64)
