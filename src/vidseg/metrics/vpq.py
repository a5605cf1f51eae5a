"""Video Panoptic Quality (VPQ) of Cityscapes-VPS (`mcahny/vps` tools/eval_vpq.py) and VIPSeg
(`eval_vpq_vspw.py`), reference/formats.md §5.4 and §6.4.

For each window size n (consecutive *annotated* frames) and every window of every video, tubes are the
pixels carrying one id across the window: GT tracks / stuff classes / the crowd region of a thing class, and
predicted (class, instance) pairs. A (GT, prediction) pair of the same class with
``IoU = I / (|p| + |g| - I - |p ∩ void|) > 0.5`` is a TP (crowd GT never matches); unmatched non-crowd GT
tubes are FN; unmatched predicted tubes are FP unless more than half of them lies on void or on the crowd
region of their class. TP/FP/FN/IoU sums accumulate per class over all windows of all videos;
``PQ_k = mean_c IoU_c / (TP_c + FP_c/2 + FN_c/2)`` over classes with TP+FP+FN > 0 (x100, all/thing/stuff),
and VPQ = mean of PQ_k over the window sizes (k = 5 (n - 1) frames in both datasets).

Speed: each frame becomes a small (GT segment x predicted segment) count table (`_panoptic.segment_pairs`:
a few passes over the pixels, one 2-D histogram); windows are then sums over (GT tube x predicted tube x
frame) tables, so the cost does not grow with the number of window sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

from vidseg.data.records import Category, DatasetRecord, VideoPrediction, VideoRecord
from vidseg.metrics._common import pair_videos
from vidseg.metrics._dense import Scratch, TrackSlots, Vocabulary, compact, scored_frames, tensor
from vidseg.metrics._panoptic import segment_pairs

CITYSCAPES_VPS_WINDOWS = (1, 2, 3, 4)
VIPSEG_WINDOWS = (1, 2, 4, 6, 8)


def _window_sums(per_frame: np.ndarray, n: int) -> np.ndarray:
    """[R, T] per-frame values -> [R, T - n + 1] sums over each window of n consecutive frames."""
    cs = np.zeros((per_frame.shape[0], per_frame.shape[1] + 1), dtype=per_frame.dtype)
    np.cumsum(per_frame, axis=1, out=cs[:, 1:])
    return cs[:, n:] - cs[:, :-n]


def _rows_sum(rows: np.ndarray, values: np.ndarray, num_rows: int) -> np.ndarray:
    """Sum rows of `values` [R, T] into `num_rows` groups given by `rows` [R]."""
    out = np.zeros((num_rows, values.shape[1]), dtype=values.dtype)
    np.add.at(out, rows, values)
    return out


class VideoTables:
    """Per-video tube tables built from one pass over the pixels: pair intersections per frame and the
    attributes of every GT / predicted tube."""

    def __init__(
        self, pred: VideoPrediction, gt: VideoRecord, vocab: Vocabulary, scratch: Scratch | None = None
    ) -> None:
        scratch = scratch or Scratch()
        c1 = vocab.num_classes + 1
        slots = TrackSlots(gt)
        g_keys, p_keys, frame_of, counts = [], [], [], []
        n_frames = 0
        for t, (frame, labels, sem, inst) in enumerate(scored_frames(pred, gt, "panoptic")):
            where = f"video {gt.video_id!r} frame {gt.frames.names[frame]!r}"
            if inst is None:  # pragma: no cover - scored_frames("panoptic") always gives instances
                raise AssertionError("panoptic prediction without instance map")
            g_slot, g_cls, p_inst, p_cls, cnt = segment_pairs(labels, sem, inst, vocab, slots, where, scratch)
            g_keys.append(g_slot * c1 + g_cls)
            p_keys.append(p_inst * c1 + p_cls)
            counts.append(cnt)
            frame_of.append(np.full(len(cnt), t, dtype=np.int64))
            n_frames = t + 1
        self.num_frames = n_frames
        gk_all = np.concatenate(g_keys) if g_keys else np.zeros(0, np.int64)
        pk_all = np.concatenate(p_keys) if p_keys else np.zeros(0, np.int64)
        g_u, g_i = compact(gk_all)
        p_u, p_i = compact(pk_all)
        pair_u, pair_i = compact(g_i * max(len(p_u), 1) + p_i)
        self.pair_g = pair_u // max(len(p_u), 1)
        self.pair_p = pair_u % max(len(p_u), 1)
        # intersections [pairs, frames]
        self.inter = np.zeros((len(pair_u), n_frames), dtype=np.int64)
        if len(pair_u):
            np.add.at(self.inter, (pair_i, np.concatenate(frame_of)), np.concatenate(counts))
        self.g_cls = g_u % c1
        self.g_void = self.g_cls == vocab.void
        self.g_crowd = vocab.isthing[self.g_cls] & (g_u // c1 == 0)
        self.p_cls = p_u % c1
        self.p_void = self.p_cls == vocab.void
        self.num_g, self.num_p = len(g_u), len(p_u)
        # per-frame areas and the parts of predicted tubes lying on GT void / on the crowd of their class
        self.g_area = _rows_sum(self.pair_g, self.inter, self.num_g)
        self.p_area = _rows_sum(self.pair_p, self.inter, self.num_p)
        on_void = self.g_void[self.pair_g]
        self.p_void_area = _rows_sum(self.pair_p[on_void], self.inter[on_void], self.num_p)
        on_crowd = self.g_crowd[self.pair_g] & (self.g_cls[self.pair_g] == self.p_cls[self.pair_p])
        self.p_crowd_area = _rows_sum(self.pair_p[on_crowd], self.inter[on_crowd], self.num_p)

    def window_stats(self, n: int, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per-class (TP, FP, FN, IoU sum) over all windows of n consecutive annotated frames."""
        tp_c = np.zeros(num_classes, np.int64)
        fp_c = np.zeros(num_classes, np.int64)
        fn_c = np.zeros(num_classes, np.int64)
        iou_c = np.zeros(num_classes, np.float64)
        if self.num_frames < n:
            return tp_c, fp_c, fn_c, iou_c
        g_area = _window_sums(self.g_area, n)
        p_area = _window_sums(self.p_area, n)
        p_void = _window_sums(self.p_void_area, n)
        # candidate pairs: listed non-void tubes, non-crowd GT, same class
        pg, pp = self.pair_g, self.pair_p
        cand = ~self.g_void[pg] & ~self.p_void[pp] & ~self.g_crowd[pg] & (self.g_cls[pg] == self.p_cls[pp])
        pg, pp = pg[cand], pp[cand]
        inter = _window_sums(self.inter[cand], n)
        union = p_area[pp] + g_area[pg] - inter - p_void[pp]
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(inter > 0, inter / np.maximum(union, 1), 0.0)
        tp = (inter > 0) & (iou > 0.5)
        cls = self.g_cls[pg]
        tp_c += np.bincount(cls, weights=tp.sum(axis=1), minlength=num_classes + 1)[:num_classes].astype(
            np.int64
        )
        iou_c += np.bincount(cls, weights=np.where(tp, iou, 0.0).sum(axis=1), minlength=num_classes + 1)[
            :num_classes
        ]
        r, s = np.nonzero(tp)
        g_matched = np.zeros(g_area.shape, dtype=bool)
        g_matched[pg[r], s] = True
        p_matched = np.zeros(p_area.shape, dtype=bool)
        p_matched[pp[r], s] = True
        fn = (g_area > 0) & ~g_matched & ~self.g_void[:, None] & ~self.g_crowd[:, None]
        fn_c += np.bincount(self.g_cls, weights=fn.sum(axis=1), minlength=num_classes + 1)[
            :num_classes
        ].astype(np.int64)
        ignored_part = p_void + _window_sums(self.p_crowd_area, n)
        with np.errstate(divide="ignore", invalid="ignore"):
            ignored = ignored_part / np.maximum(p_area, 1) > 0.5
        fp = (p_area > 0) & ~p_matched & ~ignored & ~self.p_void[:, None]
        fp_c += np.bincount(self.p_cls, weights=fp.sum(axis=1), minlength=num_classes + 1)[
            :num_classes
        ].astype(np.int64)
        return tp_c, fp_c, fn_c, iou_c


class VPQ(Metric):
    """Video Panoptic Quality over windows of `windows` consecutive annotated frames.

    `windows`: (1, 2, 3, 4) for Cityscapes-VPS (6 annotated frames per video, k = 0, 5, 10, 15) or
    (1, 2, 4, 6, 8) for VIPSeg (every frame annotated). `compute()` returns VPQ, VPQ_thing, VPQ_stuff
    (0-100) and per window `PQ_k<k>`, `PQ_k<k>_thing`, `PQ_k<k>_stuff` with k = 5 (n - 1). A group (all /
    thing / stuff) without any class having TP+FP+FN > 0 gives NaN (the official script divides by zero).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(
        self, categories: Sequence[Category], windows: Sequence[int] = CITYSCAPES_VPS_WINDOWS, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if not windows or any(int(n) < 1 for n in windows):
            raise ValueError(f"VPQ windows must be positive frame counts, got {list(windows)}")
        self.vocab = Vocabulary(categories)
        self._scratch = Scratch()
        self.windows = tuple(int(n) for n in windows)
        shape = (len(self.windows), self.vocab.num_classes)
        self.add_state("tp", torch.zeros(shape, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("fp", torch.zeros(shape, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("fn", torch.zeros(shape, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("iou", torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: VideoPrediction, gt: VideoRecord) -> None:  # type: ignore[override]
        """Score one video: its annotated frames, windows of consecutive annotated frames."""
        tables = VideoTables(pred, gt, self.vocab, self._scratch)
        c = self.vocab.num_classes
        stats = [tables.window_stats(n, c) for n in self.windows]
        self.tp += tensor(np.stack([s[0] for s in stats]), self.tp)
        self.fp += tensor(np.stack([s[1] for s in stats]), self.fp)
        self.fn += tensor(np.stack([s[2] for s in stats]), self.fn)
        self.iou += tensor(np.stack([s[3] for s in stats]), self.iou)

    def per_class(self) -> dict[str, np.ndarray]:
        """Accumulated per-window, per-class TP, FP, FN and IoU sums ([windows, classes] arrays)."""
        return {k: getattr(self, k).cpu().numpy() for k in ("tp", "fp", "fn", "iou")}

    def compute(self) -> dict[str, float]:
        stats = self.per_class()
        isthing = self.vocab.isthing[:-1]
        out: dict[str, float] = {}
        groups = {"": np.ones_like(isthing), "_thing": isthing, "_stuff": ~isthing}
        per_group: dict[str, list[float]] = {g: [] for g in groups}
        for w, n in enumerate(self.windows):
            tp, fp, fn, iou = (stats[k][w] for k in ("tp", "fp", "fn", "iou"))
            counted = (tp + fp + fn) > 0
            pq = np.where(counted, iou / np.maximum(tp + 0.5 * fp + 0.5 * fn, 1e-300), 0.0)
            for g, sel in groups.items():
                m = counted & sel
                value = float(100.0 * pq[m].sum() / m.sum()) if m.any() else float("nan")
                out[f"PQ_k{5 * (n - 1)}{g}"] = value
                per_group[g].append(value)
        for g, values in per_group.items():
            out[f"VPQ{g}"] = float(np.mean(values))
        return {k: out[k] for k in ("VPQ", "VPQ_thing", "VPQ_stuff")} | {
            k: v for k, v in out.items() if not k.startswith("VPQ")
        }


def from_records(
    gt: DatasetRecord, preds: list[VideoPrediction], *, windows: Sequence[int] | None = None, **kw: Any
) -> dict[str, float]:
    """VPQ of a whole split. `windows` defaults by dataset format: VIPSeg (1, 2, 4, 6, 8), else the
    Cityscapes-VPS (1, 2, 3, 4). A GT video without prediction is an error (no panoptic maps)."""
    if windows is None:
        windows = VIPSEG_WINDOWS if gt.format == "vipseg" else CITYSCAPES_VPS_WINDOWS
    metric = VPQ(gt.categories, windows=windows, **kw)
    for video, pred in pair_videos(gt, preds):
        metric.update(pred, video)
    return metric.compute()
