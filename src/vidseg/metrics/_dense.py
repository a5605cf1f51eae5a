"""Helpers shared by the dense (label-map) metrics VPQ, STQ and mIoU: vocabulary lookup tables (vocabulary
index 0..C-1, C for void), pairing of prediction frames with annotated GT frames, GT track slots, pair
histograms (cv2.calcHist or one bincount), linear-time unique/pair counting, and reused work arrays.
Private to `vidseg.metrics`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

try:  # opencv is optional (dev extra): a faster 2-D histogram when present
    import cv2
except ImportError:  # pragma: no cover - exercised only without opencv
    cv2 = None

from vidseg.data.formats.vps_common import prediction_frames, prediction_panoptic_maps
from vidseg.data.records import (
    IGNORE_LABEL,
    AnnotationFormatError,
    Category,
    FrameLabels,
    VideoPrediction,
    VideoRecord,
)

_DENSE_SPAN_LIMIT = 1 << 16


class Vocabulary:
    """Dataset category id -> contiguous index 0..C-1 (vocabulary order), IGNORE_LABEL -> C (void)."""

    def __init__(self, categories: Sequence[Category], things: Sequence[int] | None = None) -> None:
        if not categories:
            raise ValueError("a dense metric needs a non-empty vocabulary (categories)")
        ids = [int(c.id) for c in categories]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate category ids in the vocabulary: {ids}")
        if any(i < 0 or i == IGNORE_LABEL for i in ids):
            raise ValueError(f"category ids must be >= 0 and != {IGNORE_LABEL}: {ids}")
        self.categories = list(categories)
        self.ids = np.asarray(ids, dtype=np.int64)
        self.num_classes = len(ids)
        thing_ids = {c.id for c in categories if c.isthing} if things is None else set(things)
        unknown = thing_ids - set(ids)
        if unknown:
            raise ValueError(f"thing ids {sorted(unknown)} are not in the vocabulary")
        # index -> isthing, with the void index C last (never a thing)
        self.isthing = np.array([i in thing_ids for i in ids] + [False], dtype=bool)
        # id -> index lookup in the smallest dtype (memory traffic dominates); `invalid` marks unknown ids
        self.dtype = np.uint8 if self.num_classes + 1 < 255 else np.int16
        self.invalid = 255 if self.dtype == np.uint8 else -1
        self.lut = np.full(max(max(ids), IGNORE_LABEL) + 1, self.invalid, dtype=self.dtype)
        self.lut[self.ids] = np.arange(self.num_classes)
        self.lut[IGNORE_LABEL] = self.num_classes
        self._remap_plans: dict[tuple[int, int], tuple] = {}  # histogram shape -> index arrays

    @property
    def void(self) -> int:
        return self.num_classes

    def index(self, semantic: np.ndarray, where: str, *, allow_void: bool = True) -> np.ndarray:
        """Vocabulary indices (uint8, or int16 for > 253 classes; void = C) of a map of category ids;
        unknown ids raise naming `where`. Cast before arithmetic: small dtypes overflow."""
        sem = np.asarray(semantic)
        if sem.dtype.kind not in "iu":
            raise AnnotationFormatError(f"{where}: semantic map must be integer, got {sem.dtype}")
        if sem.size == 0:
            return np.zeros(sem.shape, self.dtype)
        # one pass for the range: negative values become huge in the unsigned view
        unsigned = sem.view(np.dtype(f"u{sem.dtype.itemsize}")) if sem.dtype.kind == "i" else sem
        if int(unsigned.max()) >= len(self.lut):
            bad = int(sem.min()) if int(sem.min()) < 0 else int(sem.max())
            raise AnnotationFormatError(f"{where}: semantic id {bad} is not a category id of the vocabulary")
        out = self.lut[sem]
        bad_mask = out == self.invalid
        if not allow_void:
            bad_mask |= out == self.void
        if bad_mask.any():
            raise AnnotationFormatError(
                f"{where}: semantic id {int(sem[bad_mask].flat[0])} is not a category id of the vocabulary"
            )
        return out

    def remap_histogram(self, hist: np.ndarray) -> np.ndarray | None:
        """A histogram over raw (GT id, predicted id) pairs -> [C+1, C+1] counts over vocabulary indices (void =
        C). None when an occurring id is unknown (the caller then reports it through `index`)."""
        ra, rb = hist.shape
        if ra > len(self.lut) or rb > len(self.lut):
            return None
        plan = self._remap_plans.get((ra, rb))
        if plan is None:
            g_idx, p_idx = self.lut[:ra].astype(np.intp), self.lut[:rb].astype(np.intp)
            g_ok, p_ok = g_idx != self.invalid, p_idx != self.invalid
            rows, cols = np.flatnonzero(g_ok), np.flatnonzero(p_ok)
            plan = (~g_ok, ~p_ok, np.ix_(rows, cols), np.ix_(g_idx[rows], p_idx[cols]))
            self._remap_plans[(ra, rb)] = plan
        g_bad, p_bad, source, target = plan
        if (g_bad.any() and hist[g_bad].any()) or (p_bad.any() and hist[:, p_bad].any()):
            return None
        out = np.zeros((self.num_classes + 1, self.num_classes + 1), dtype=np.int64)
        # the lookup is one-to-one on known ids (distinct ids, IGNORE_LABEL alone on void): plain assignment
        out[target] = hist[source]
        return out


def id_range(values: np.ndarray) -> int | None:
    """1 + the largest value of an integer map, or None when it has a negative value, is not integer, or is
    empty (callers then take their slow, error-reporting path). One pass: negatives are huge unsigned."""
    if values.dtype.kind not in "iu" or values.size == 0:
        return None
    unsigned = values.view(np.dtype(f"u{values.dtype.itemsize}")) if values.dtype.kind == "i" else values
    top = int(unsigned.max())
    if values.dtype.kind == "i" and top >= 1 << (8 * values.dtype.itemsize - 1):
        return None
    return top + 1


class Scratch:
    """Work arrays reused from frame to frame, by name: a fresh multi-megabyte temporary per frame costs page
    faults (the allocator hands large blocks back to the OS), often more than the arithmetic itself."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: type | np.dtype, order: str = "C") -> np.ndarray:
        arr = self._arrays.get(name)
        if arr is not None and arr.shape == shape and arr.dtype == dtype and order == "C" and arr.flags.c_contiguous:
            return arr
        if arr is None or arr.shape != shape or arr.dtype != np.dtype(dtype) or not arr.flags[f"{order}_CONTIGUOUS"]:
            arr = np.empty(shape, dtype=dtype, order=order)  # type: ignore[call-overload]
            self._arrays[name] = arr
        return arr

    def lane_pattern(self, shape: tuple[int, ...], lanes: int, dtype: type = np.uint8) -> np.ndarray:
        """Map holding column index % lanes (read-only, built once per shape and dtype)."""
        key = f"lanes{lanes}_{dtype.__name__}"
        arr = self._arrays.get(key)
        if arr is None or arr.shape != shape:
            arr = np.empty(shape, dtype)
            arr[:] = (np.arange(shape[-1]) % lanes).astype(dtype)
            self._arrays[key] = arr
        return arr


def raw_pair_histogram(
    a: np.ndarray, b: np.ndarray, limit: int = 1 << 20, scratch: Scratch | None = None
) -> np.ndarray | None:
    """Counts [Ra, Rb] of the (a, b) value pairs of two equally shaped non-negative int maps (Ra, Rb = 1 +
    max). None when a map is not a non-negative int map or Ra * Rb > limit."""
    ra, rb = id_range(a), id_range(b)
    if ra is None or rb is None or ra * rb > limit:
        return None
    return pair_histogram(a, b, ra, rb, scratch or Scratch())


def pair_histogram(a: np.ndarray, b: np.ndarray, ra: int, rb: int, scratch: Scratch) -> np.ndarray:
    """int64 counts [ra, rb] of the (a, b) value pairs of two equally shaped int maps with values in
    [0, ra) and [0, rb). With OpenCV and values that fit in 16 bits: `cv2.calcHist` on small-type copies
    (unit-width bins, exact integer counts below 2**24 pixels); else one bincount over int64 a * rb + b."""
    if cv2 is not None and ra <= 1 << 16 and rb <= 1 << 16 and a.size < 1 << 24 and a.ndim == 2:
        small_type = np.uint8 if max(ra, rb) <= 256 else np.uint16  # calcHist wants one depth
        small = []
        for name, x in (("hist_a", a), ("hist_b", b)):
            if x.dtype != small_type or not x.flags.c_contiguous:
                buf = scratch.get(name, x.shape, small_type)
                np.copyto(buf, x, casting="unsafe")
                x = buf
            small.append(x)
        if small_type == np.uint8:
            return byte_pair_histogram(small[0], small[1], ra, rb, scratch)
        hist = cv2.calcHist(small, [0, 1], None, [ra, rb], [0, ra, 0, rb])
        return hist.astype(np.int64)
    cell = scratch.get("pair_cell", a.shape, np.int64)
    np.multiply(a, rb, out=cell, dtype=np.int64, casting="unsafe")  # int64 arithmetic: no wrap-around
    np.add(cell, b, out=cell, casting="unsafe")  # values are bounded by the caller's range check
    return np.bincount(cell.ravel(), minlength=ra * rb).reshape(ra, rb)


LANES = 4  # interleaved sub-histograms (see byte_pair_histogram)


def byte_pair_histogram(a: np.ndarray, b: np.ndarray, ra: int, rb: int, scratch: Scratch) -> np.ndarray:
    """int64 counts [ra, rb] of the (a, b) pairs of two C-contiguous 2-D uint8 maps (values < ra, rb <= 256)
    with one `cv2.calcHist` (a bincount without OpenCV).

    Label maps are piecewise constant, so neighbouring pixels hit the same bin and each increment waits for
    the previous one; giving the pixels of column x the sub-bin x % 4 of the smaller side (its value * 4 +
    x % 4, one byte-wide pass: `lane_keys`) spreads them over 4 bins and about halves the time. The sub-bins
    are summed after (float32 counts are exact below 2**24 pixels)."""
    if cv2 is None:
        cell = np.multiply(a, rb, dtype=np.int64)
        cell += b
        return np.bincount(cell.ravel(), minlength=ra * rb).reshape(ra, rb)
    if rb * LANES <= 256:
        return laned_pair_histogram(a, lane_keys(b, scratch, "lane_key"), ra, rb)
    if ra * LANES <= 256:
        return laned_pair_histogram(b, lane_keys(a, scratch, "lane_key"), rb, ra).T
    return cv2.calcHist([a, b], [0, 1], None, [ra, rb], [0, ra, 0, rb]).astype(np.int64)


def lane_keys(values: np.ndarray, scratch: Scratch, name: str) -> np.ndarray:
    """uint8 map values * LANES + column % LANES of a 2-D integer map with values < 256 / LANES (any integer
    dtype: the arithmetic runs in its type and the result is cast, read straight from e.g. int32 input)."""
    keyed = scratch.get(name, values.shape, np.uint8)
    np.multiply(values, LANES, out=keyed, casting="unsafe")
    np.add(keyed, scratch.lane_pattern(values.shape, LANES), out=keyed)
    return keyed


def laned_pair_histogram(a: np.ndarray, keyed: np.ndarray, ra: int, rb: int) -> np.ndarray:
    """int64 counts [ra, rb] of the (a, b) pairs from uint8 `a` (values < ra) and `keyed` = lane_keys(b)
    (b < rb, rb * LANES <= 256): one OpenCV histogram over the sub-bins, summed."""
    hist = cv2.calcHist([a, keyed], [0, 1], None, [ra, rb * LANES], [0, ra, 0, rb * LANES])
    total = hist[:, 0::LANES] + hist[:, 1::LANES]  # float32 sums of counts stay exact below 2**24
    for k in range(2, LANES):
        total += hist[:, k::LANES]
    return total.astype(np.int64)


def compact(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique values, inverse index per element) of an int array. Linear-time (bincount) when the
    value range is small compared to the array, np.unique otherwise."""
    flat = np.asarray(values).ravel()
    if flat.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lo, hi = int(flat.min()), int(flat.max())
    span = hi - lo + 1
    if span <= max(4 * flat.size, _DENSE_SPAN_LIMIT):
        shifted = flat - lo if lo else flat
        present = np.bincount(shifted, minlength=span) > 0
        slot = np.cumsum(present) - 1
        return np.flatnonzero(present).astype(np.int64) + lo, slot[shifted]
    uniq, inverse = np.unique(flat, return_inverse=True)
    return uniq.astype(np.int64), inverse.ravel()


def pair_counts(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Co-occurrence counts of two equally shaped int maps: (a values, b values, counts) of every pair
    that occurs at least once."""
    ua, ia = compact(a)
    ub, ib = compact(b)
    counts = np.bincount(ia * len(ub) + ib, minlength=len(ua) * len(ub)).reshape(len(ua), len(ub))
    ra, rb = np.nonzero(counts)
    return ua[ra], ub[rb], counts[ra, rb]


def scored_frames(
    pred: VideoPrediction, gt: VideoRecord, kind: str
) -> Iterator[tuple[int, FrameLabels, np.ndarray, np.ndarray | None]]:
    """For each annotated GT frame (in order): (frame index, decoded GT labels, predicted semantic map,
    predicted instance map or None). `kind` is "panoptic" (panoptic_maps, or tracks pasted over
    semantic_maps) or "semantic" (semantic_maps). Prediction frames are found by frame name."""
    where = f"prediction for video {gt.video_id!r}"
    if pred.video_id != gt.video_id:
        raise AnnotationFormatError(f"{where}: paired with a prediction for video {pred.video_id!r}")
    if kind == "panoptic":
        if pred.panoptic_maps is None and pred.semantic_maps is None:
            raise AnnotationFormatError(f"{where}: no panoptic_maps (nor semantic_maps) to score")
        maps: list = prediction_panoptic_maps(pred, "metric")
    else:
        if pred.semantic_maps is None:
            raise AnnotationFormatError(f"{where}: no semantic_maps to score")
        if len(pred.semantic_maps) != len(pred.frame_names):
            raise AnnotationFormatError(
                f"{where}: {len(pred.semantic_maps)} semantic maps for {len(pred.frame_names)} frame names"
            )
        maps = [(m, None) for m in pred.semantic_maps]
    positions = prediction_frames(pred, gt, gt.annotated_frames, "metric")
    for ann, pos in zip(gt.annotations, positions):
        sem, inst = maps[pos]
        if sem is None:
            raise AnnotationFormatError(f"{where}: frame {gt.frames.names[ann.frame]!r} has no prediction")
        if sem.shape != (gt.height, gt.width):
            raise AnnotationFormatError(
                f"{where}: frame {gt.frames.names[ann.frame]!r} map shape {sem.shape} != "
                f"{(gt.height, gt.width)}"
            )
        yield ann.frame, ann.decode(), np.asarray(sem), None if inst is None else np.asarray(inst)


class TrackSlots:
    """Small positive slots for the GT track ids of one video (sorted track ids first), so GT keys stay in
    a small integer range whatever the format's track ids are (KITTI-STEP uses ``class << 16 | id``)."""

    def __init__(self, gt: VideoRecord) -> None:
        self.slot = {tid: i + 1 for i, tid in enumerate(sorted(gt.tracks))}
        self.crowd = {tid for tid, info in gt.tracks.items() if info.iscrowd}

    def get(self, tid: int) -> int:
        if tid not in self.slot:
            self.slot[tid] = len(self.slot) + 1
        return self.slot[tid]


def tensor(x: np.ndarray | float | int, like: torch.Tensor) -> torch.Tensor:
    """A numpy value as a tensor with the dtype and device of a metric state."""
    return torch.as_tensor(np.asarray(x), dtype=like.dtype).to(like.device)


def encode_name(name: str, width: int = 128) -> torch.Tensor:
    """A video id as a fixed-width uint8 row (DDP-gatherable 'cat' state); longer ids are refused."""
    raw = name.encode("utf-8")
    if len(raw) > width:
        raise ValueError(f"video id {name!r} is longer than {width} bytes")
    out = torch.zeros(1, width, dtype=torch.uint8)
    out[0, : len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
    return out


def decode_name(row: torch.Tensor) -> str:
    return bytes(row[row > 0].tolist()).decode("utf-8")
