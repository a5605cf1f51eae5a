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

from vidseg.data.records import IGNORE_LABEL, AnnotationFormatError, FrameLabels
from vidseg.metrics._dense import TrackSlots, Vocabulary, id_range, pair_counts

_JOINT_LIMIT = 1 << 22  # largest instance id range compacted with a bincount (else np.unique)


def fast_index(vocab: Vocabulary, semantic: np.ndarray, where: str) -> np.ndarray:
    """`vocab.index(semantic, where)` (void = C), with a uint8 lookup when the ids fit in a byte; unknown ids
    raise through `vocab.index`."""
    sem = np.asarray(semantic)
    top = id_range(sem)
    if top is None or top > len(vocab.lut):
        return vocab.index(sem, where)
    c = vocab.num_classes
    if top <= 256 and np.array_equal(vocab.ids, np.arange(c)):  # ids 0..C-1: clip instead of a lookup
        if top > c and np.any((sem >= c) & (sem != IGNORE_LABEL)):
            return vocab.index(sem, where)  # raises naming the id
        return np.minimum(sem, c).astype(vocab.dtype)
    small = sem if sem.dtype == np.uint8 or top > 256 else sem.astype(np.uint8)
    out = np.take(vocab.lut, small)
    if (out == vocab.invalid).any():
        return vocab.index(sem, where)  # raises naming the id
    return out


def paint_slots(masks: dict[int, np.ndarray], slots: TrackSlots, shape: tuple[int, ...], where: str) -> np.ndarray:
    """uint16/int32 map of GT track slots (0 where no track; crowd tracks stay 0), each mask pasted inside its
    bounding box, later masks winning as `inst[mask] = slot` does."""
    items = []
    for tid, mask in masks.items():
        if mask.shape != shape:
            raise AnnotationFormatError(f"{where}: GT track {tid} mask shape {mask.shape} != {shape}")
        if tid not in slots.crowd:
            items.append((slots.get(tid), mask))
    out = np.zeros(shape, dtype=np.uint16 if len(slots.slot) < 2**16 else np.int32)
    for slot, mask in items:
        rows = np.flatnonzero(mask.any(axis=1))
        if len(rows) == 0:
            continue
        band = mask[rows[0] : rows[-1] + 1]
        cols = np.flatnonzero(band.any(axis=0))
        view = out[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        view[band[:, cols[0] : cols[-1] + 1]] = slot
    return out


def segment_pairs(
    labels: FrameLabels,
    sem: np.ndarray,
    inst: np.ndarray,
    vocab: Vocabulary,
    slots: TrackSlots,
    where: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(GT slot, GT class index, predicted instance id, predicted class index, pixel count) of every pair of
    GT and predicted segments sharing pixels in one frame (int64 arrays).

    GT: class = vocabulary index of `labels.semantic`, void (C) where IGNORE_LABEL or `labels.void`; slot =
    the track's slot (0 for stuff, crowd tracks and thing pixels without a track). Prediction: class index
    of `sem` (void allowed; such segments are void whatever their instance) and the raw instance id."""
    if labels.semantic is None:
        raise AnnotationFormatError(f"{where}: GT has no semantic map (a panoptic/semantic format is needed)")
    g_cls = fast_index(vocab, labels.semantic, f"{where} (GT)")
    shape = g_cls.shape
    if labels.void is not None:
        if labels.void.shape != shape:
            raise AnnotationFormatError(f"{where}: GT void mask shape {labels.void.shape} != {shape}")
        if np.any(labels.void & (g_cls != vocab.void)):
            g_cls = np.where(labels.void, vocab.void, g_cls).astype(g_cls.dtype)
    g_slot = paint_slots(labels.masks, slots, shape, where)
    p_cls = fast_index(vocab, sem, f"{where} (prediction)")
    inst = np.asarray(inst)
    if inst.shape != p_cls.shape:
        raise AnnotationFormatError(f"{where}: instance map shape {inst.shape} != semantic {p_cls.shape}")
    if inst.dtype.kind not in "iu":
        raise AnnotationFormatError(f"{where}: instance map must be integer, got {inst.dtype}")
    top = id_range(inst)
    if top is None:
        raise AnnotationFormatError(f"{where}: negative predicted instance id {int(inst.min())}")
    c1 = vocab.num_classes + 1
    num_g = (int(g_slot.max(initial=0)) + 1) * c1
    # a dense bincount costs ~1 pass over its bins: key on raw instance ids unless that beats 2 pixel passes
    if num_g * top * c1 <= max(1 << 16, 4 * inst.size):
        inst_ids, compact_inst = np.arange(top), inst
    elif top <= _JOINT_LIMIT:  # compact instance numbers: their ids are arbitrary (e.g. 1000 * i + c)
        present = np.bincount(inst.ravel(), minlength=top) > 0
        inst_ids = np.flatnonzero(present)
        compact_inst = np.take(np.cumsum(present, dtype=np.int32) - 1, inst)
    else:
        inst_ids, compact_inst = np.unique(inst, return_inverse=True)
        compact_inst = compact_inst.reshape(shape)
    num_p = len(inst_ids) * c1
    g_key = np.multiply(g_slot, c1, dtype=np.int32)
    g_key += g_cls
    p_key = np.multiply(compact_inst, c1, dtype=np.int32, casting="unsafe")
    p_key += p_cls
    if num_g * num_p <= max(1 << 16, 4 * inst.size):
        joint = np.multiply(g_key, num_p, dtype=np.int64)  # bincount's own dtype: no conversion pass
        joint += p_key
        counts = np.bincount(joint.ravel(), minlength=num_g * num_p)
        nonzero = np.flatnonzero(counts)
        g_u, p_u, cnt = nonzero // num_p, nonzero % num_p, counts[nonzero]
    else:
        g_u, p_u, cnt = pair_counts(g_key, p_key)
    g_u, p_u = g_u.astype(np.int64), p_u.astype(np.int64)
    return g_u // c1, g_u % c1, inst_ids[p_u // c1].astype(np.int64), p_u % c1, cnt.astype(np.int64)
