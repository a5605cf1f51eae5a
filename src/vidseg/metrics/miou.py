"""VSPW video semantic segmentation metrics (`VSPW-dataset/VSPW_code`, reference/formats.md §7): mIoU and
video consistency VC_n.

- mIoU: one C x C confusion matrix over every annotated frame of every video (GT void - VSPW's 0 and 255,
  mapped to IGNORE_LABEL by the reader - is skipped); ``IoU_c = TP / (TP + FP + FN)``; the mean runs over the
  classes present in the GT (row sum > 0) only, predicted-but-absent classes are excluded.
- VC_n (n = 8, 16): for each video and each start i in [0, T - n) (the last possible window is skipped, as
  in the official `get_common`), C = pixels whose GT label is the same in annotated frames i..i+n-1 and
  P = pixels whose prediction is the same there; the window scores |C & P| / |C| (NaN when |C| = 0);
  VC_n = mean over all non-NaN windows of all videos. mVC_n in the output is that mean.

Speed and memory: per frame one histogram over raw (GT id, predicted id) pairs (mapped through the
vocabulary on the histogram, not on the pixels), the predicted ids read once from the input straight into
"lane keys" (id * 4 + column % 4: equal neighbours then land in different sub-bins, see
`_dense.byte_pair_histogram`). VC streams the frames: per pixel the last frame where the GT / either map
changed, so a window is two counts; a video is never held in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

from vidseg.data.records import (
    IGNORE_LABEL,
    AnnotationFormatError,
    Category,
    DatasetRecord,
    VideoPrediction,
    VideoRecord,
)
from vidseg.metrics import _dense
from vidseg.metrics._common import pair_videos
from vidseg.metrics._dense import (
    LANES,
    Scratch,
    Vocabulary,
    byte_pair_histogram,
    id_range,
    lane_keys,
    laned_pair_histogram,
    raw_pair_histogram,
    scored_frames,
    tensor,
)

VSPW_VC_WINDOWS = (8, 16)


class SemanticMIoU(Metric):
    """VSPW mIoU (0-1) over classes present in the GT, plus mVC_<n> for n in `vc_windows` (0-1).
    Predictions are `VideoPrediction.semantic_maps` holding category ids of the vocabulary (no void)."""

    full_state_update = False
    higher_is_better = True

    def __init__(
        self, categories: Sequence[Category], vc_windows: Sequence[int] = VSPW_VC_WINDOWS, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if any(int(n) < 2 for n in vc_windows):
            raise ValueError(f"VC windows must have at least 2 frames, got {list(vc_windows)}")
        self.vocab = Vocabulary(categories)
        self.vc_windows = tuple(int(n) for n in vc_windows)
        c = self.vocab.num_classes
        self.add_state("confusion", torch.zeros((c, c), dtype=torch.int64), dist_reduce_fx="sum")
        self._scratch = Scratch()
        self.add_state("vc_sum", torch.zeros(len(self.vc_windows), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("vc_count", torch.zeros(len(self.vc_windows), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, pred: VideoPrediction, gt: VideoRecord) -> None:  # type: ignore[override]
        """Score the annotated frames of one video."""
        counter = _VideoCounter(self.vocab, len(gt.annotations), self.vc_windows, self._scratch)
        for frame, labels, sem, _ in scored_frames(pred, gt, "semantic"):
            where = f"video {gt.video_id!r} frame {gt.frames.names[frame]!r}"
            if labels.semantic is None:
                raise AnnotationFormatError(f"{where}: GT has no semantic map")
            g = np.asarray(labels.semantic)
            if labels.void is not None and labels.void.shape != g.shape:
                raise AnnotationFormatError(f"{where}: GT void mask shape {labels.void.shape} != {g.shape}")
            counter.add(g, labels.void, np.asarray(sem), where)
        c = self.vocab.num_classes
        self.confusion += tensor(counter.total[:c, :c], self.confusion)  # void GT row and column dropped
        self.vc_sum += tensor(counter.vc_sums, self.vc_sum)
        self.vc_count += tensor(counter.vc_counts, self.vc_count)

    def compute(self) -> dict[str, float]:
        conf = self.confusion.cpu().numpy().astype(np.float64)
        tp = np.diag(conf)
        in_gt = conf.sum(axis=1) > 0
        union = conf.sum(axis=1) + conf.sum(axis=0) - tp
        miou = float(np.mean(tp[in_gt] / union[in_gt])) if in_gt.any() else float("nan")
        out = {"mIoU": miou}
        vc_sum, vc_count = self.vc_sum.cpu().numpy(), self.vc_count.cpu().numpy()
        for w, n in enumerate(self.vc_windows):
            out[f"mVC_{n}"] = float(vc_sum[w] / vc_count[w]) if vc_count[w] else float("nan")
        return out


def from_records(
    gt: DatasetRecord, preds: list[VideoPrediction], *, vc_windows: Sequence[int] = VSPW_VC_WINDOWS, **kw: Any
) -> dict[str, float]:
    """mIoU (and mVC_n) of a whole split; a GT video without prediction is an error."""
    metric = SemanticMIoU(gt.categories, vc_windows=vc_windows, **kw)
    for video, pred in pair_videos(gt, preds):
        metric.update(pred, video)
    return metric.compute()


def _count(mask: np.ndarray) -> int:
    """Number of True values of a bool map (OpenCV's count is about twice numpy's on 2-D maps)."""
    if _dense.cv2 is not None and mask.ndim == 2 and mask.flags.c_contiguous:
        return int(_dense.cv2.countNonZero(mask.view(np.uint8)))
    return int(np.count_nonzero(mask))


def _all_bytes(*maps: np.ndarray | None) -> bool:
    """Whether every map is a 2-D uint8 array (OpenCV's byte operations apply)."""
    return all(m is not None and m.dtype == np.uint8 and m.ndim == 2 for m in maps)


class _VideoCounter:
    """Confusion and VC_n of one video, streamed frame by frame.

    Confusion: one histogram over raw (GT id, predicted id) pairs per frame, mapped through the vocabulary on
    the small histogram (unknown ids raise there). VC: per pixel last_g / last_both = the last frame where
    the GT / either map changed (kept as max(last, t * changed): t grows). A window start..t is
    GT-consistent at a pixel iff last_g <= start, and consistent on both sides iff last_both <= start.
    """

    def __init__(self, vocab: Vocabulary, num_frames: int, windows: tuple[int, ...], scratch: Scratch) -> None:
        self.vocab, self.num_frames, self.windows, self.scratch = vocab, num_frames, windows, scratch
        c1 = vocab.num_classes + 1
        self.total = np.zeros((c1, c1), np.int64)
        self.vc_sums = np.zeros(len(windows), np.float64)
        self.vc_counts = np.zeros(len(windows), np.int64)
        self.vc_active = bool(windows) and num_frames > min(windows)
        self.t = -1
        self.prev_g: np.ndarray | None = None
        self.prev_p: np.ndarray | None = None
        self.prev_keyed = False  # prev_p holds lane keys (id * LANES + column % LANES), not ids
        self.dtype = np.int8 if num_frames < 2**7 else np.int16 if num_frames < 2**15 else np.int32
        self.last_g = self.last_both = np.zeros(0, self.dtype)

    def _confusion(self, g: np.ndarray, p: np.ndarray, where: str) -> np.ndarray:
        """[C+1, C+1] (GT index, predicted index) counts of equally shaped id arrays; unknown ids and void
        predictions raise naming `where`."""
        hist = raw_pair_histogram(g, p, scratch=self.scratch)
        remapped = None if hist is None else self.vocab.remap_histogram(hist)
        if remapped is not None and not remapped[:, self.vocab.void].any():
            return remapped
        gi = self.vocab.index(g, f"{where} (GT)").astype(np.int64)  # slow path: reports the bad id
        pi = self.vocab.index(p, f"{where} (prediction)", allow_void=False)
        c1 = self.vocab.num_classes + 1
        return np.bincount((gi * c1 + pi).ravel(), minlength=c1 * c1).reshape(c1, c1)

    def add(self, g: np.ndarray, void: np.ndarray | None, p: np.ndarray, where: str) -> None:
        """The next annotated frame: GT ids, GT void mask (or None) and predicted ids, same shape."""
        self.t += 1
        t = self.t
        top_g, top_p = id_range(g), id_range(p)
        bytes_fit = top_g is not None and top_p is not None and max(top_g, top_p) <= 256
        if _dense.cv2 is not None and g.ndim == 2 and bytes_fit:
            # byte copies (void folded in as max(id, 255 * void): IGNORE_LABEL is the largest byte), one
            # OpenCV 2-D histogram, and the VC comparisons on bytes; two copy sets alternate (prev / current)
            g8 = self.scratch.get(f"g8_{t % 2}", g.shape, np.uint8)
            np.copyto(g8, g, casting="unsafe")
            if void is not None:
                void8 = self.scratch.get("void8", g.shape, np.uint8)
                np.multiply(void, IGNORE_LABEL, out=void8, dtype=np.uint8)
                np.maximum(g8, void8, out=g8)
            rows = 256 if void is not None else top_g
            keyed = top_p * LANES <= 256
            if keyed:  # predicted ids as histogram lane keys, read once from the input
                p8 = lane_keys(p, self.scratch, f"p8_{t % 2}")  # equal where p is equal: fine for VC too
                hist = laned_pair_histogram(g8, p8, rows, top_p)
            else:
                p8 = self.scratch.get(f"p8_{t % 2}", g.shape, np.uint8)
                np.copyto(p8, p, casting="unsafe")
                hist = byte_pair_histogram(g8, p8, rows, top_p, self.scratch)
            remapped = self.vocab.remap_histogram(hist)
            if remapped is None or remapped[:, self.vocab.void].any():  # an unknown id: reported there
                remapped = self._confusion(g if void is None else np.where(void, IGNORE_LABEL, g), p, where)
            self.total += remapped
            g, p = g8, p8
        else:
            keyed = False
            if void is not None and np.any(void & (g != IGNORE_LABEL)):
                g = np.where(void, IGNORE_LABEL, g)
            self.total += self._confusion(g, p, where)
        if not self.vc_active:
            return
        p_now, p_before = p, self.prev_p
        if p_before is not None and keyed != self.prev_keyed:  # lane keys vs plain ids: compare plain ids
            if keyed:
                p_now = np.floor_divide(p, LANES)
            else:
                p_before = np.floor_divide(p_before, LANES)
        if self.prev_g is None or p_before is None or self.prev_g.shape != g.shape:
            self.last_g = np.zeros(g.shape, self.dtype)
            self.last_both = np.zeros(g.shape, self.dtype)
        elif _dense.cv2 is not None and self.dtype == np.int8 and _all_bytes(g, self.prev_g, p_now, p_before):
            # byte maps: OpenCV masks (0/255); min(mask, t) is the stamp, kept with max (t < 128)
            cv2 = _dense.cv2
            shape = g.shape
            changed_g = cv2.compare(g, self.prev_g, cv2.CMP_NE, dst=self.scratch.get("changed_g", shape, np.uint8))
            changed = cv2.compare(p_now, p_before, cv2.CMP_NE, dst=self.scratch.get("changed", shape, np.uint8))
            cv2.bitwise_or(changed, changed_g, dst=changed)
            stamp = self.scratch.get("stamp", shape, np.uint8)
            last_g, last_both = self.last_g.view(np.uint8), self.last_both.view(np.uint8)
            cv2.max(last_g, cv2.min(changed_g, t, dst=stamp), dst=last_g)
            cv2.max(last_both, cv2.min(changed, t, dst=stamp), dst=last_both)
        else:
            changed_g = np.not_equal(g, self.prev_g, out=self.scratch.get("changed_g", g.shape, bool))
            changed = np.not_equal(p_now, p_before, out=self.scratch.get("changed", g.shape, bool))
            changed |= changed_g
            stamp = self.scratch.get("stamp", g.shape, self.dtype)
            np.multiply(changed_g, t, out=stamp, dtype=self.dtype)
            np.maximum(self.last_g, stamp, out=self.last_g)
            np.multiply(changed, t, out=stamp, dtype=self.dtype)
            np.maximum(self.last_both, stamp, out=self.last_both)
        self.prev_g, self.prev_p, self.prev_keyed = g, p, keyed
        if t > self.num_frames - 2:
            return  # the official loop has no window ending at the last annotated frame
        for w, n in enumerate(self.windows):
            start = t - n + 1  # the window is start..t
            if start < 0:
                continue
            within = self.scratch.get("within", self.last_g.shape, bool)
            n_common = _count(np.less_equal(self.last_g, start, out=within))
            if n_common:  # 0/0 is NaN in the official code, and nanmean skips it
                both = _count(np.less_equal(self.last_both, start, out=within))
                self.vc_sums[w] += both / n_common
                self.vc_counts[w] += 1
