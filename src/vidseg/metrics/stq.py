"""Segmentation and Tracking Quality (STQ) of KITTI-STEP (deeplab2 `STQuality`, reference/formats.md §4.2)
and of VIPSeg (`eval_stq_vspw.py`, §6.5).

Per sequence (one `update` = one video): GT thing pixels that carry a track form the GT tracks (crowd = thing
pixels without a track, ignored on both sides); predicted tracks are (class, instance) pairs over pixels of
a predicted thing class outside the crowd. ``AQ(g) = 1/|g| * sum_p TPA(g,p) * IoU(g,p)`` with
``IoU = TPA / (|p| + |g| - TPA)``; AQ = sum of AQ(g) over all GT tracks of all sequences / number of tracks.
SQ_IoU = mean class IoU of the summed semantic confusion matrix ((C+1) x (C+1), void index C, void GT row
zeroed, void *column* kept: predicting void on labelled pixels adds a zero-IoU class), over classes with
a non-zero union. STQ = sqrt(AQ * SQ_IoU). Per sequence the same with its own tracks and confusion matrix.

variant="vipseg" adds the official script's first-segment quirk: the first segment listed in the first
frame gets instance 0, so if it is a thing track the whole track counts as crowd. VIPSeg lists the segments
of a frame in ascending raw value: stuff (by class) before things (by class, then instance); here things
are ordered by (category index, GT track id), so a reader should number VIPSeg tracks by raw value.

Speed: the confusion matrix and the tracking pair counts of a frame both come from its (GT segment,
predicted segment) count table (`_panoptic.segment_pairs`), never from per-pixel masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torchmetrics import Metric

from vidseg.data.records import Category, DatasetRecord, VideoPrediction, VideoRecord
from vidseg.metrics._common import cat_state, pair_videos
from vidseg.metrics._dense import (
    Scratch,
    TrackSlots,
    Vocabulary,
    compact,
    decode_name,
    encode_name,
    scored_frames,
    tensor,
)
from vidseg.metrics._panoptic import segment_pairs

KITTI_STEP_THINGS = (11, 13)


def class_ious(confusion: np.ndarray) -> float:
    """Mean IoU over classes with a non-zero union of a (C+1)^2 confusion matrix whose void row is zeroed
    (NaN when no class has a union, as the official numpy code divides 0 by 0)."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
    counted = np.count_nonzero(union)
    if counted == 0:
        return float("nan")
    return float(np.sum(tp / np.maximum(union, 1e-15)) / counted)


def first_listed_track(g_slot: np.ndarray, g_cls: np.ndarray, slots: TrackSlots, vocab: Vocabulary) -> int | None:
    """Slot of the GT track VIPSeg's STQ script would give instance 0 (the first segment listed in the first
    frame), or None when that segment is a stuff segment or a crowd region (no effect). Input: the GT side
    (slot, class index) of the first frame's segment pair table."""
    present = g_cls != vocab.void
    if (present & ~vocab.isthing[g_cls]).any():
        return None  # a stuff segment is listed first
    tracked = present & (g_slot > 0)
    if not tracked.any():
        return None
    # things ordered by (category index, track id): the slot order follows sorted track ids
    slot_to_tid = {s: t for t, s in slots.slot.items()}
    segments = set(zip(g_cls[tracked].tolist(), g_slot[tracked].tolist()))
    best_cls, best_slot = min(segments, key=lambda k: (k[0], slot_to_tid.get(k[1], 0)))
    untracked_thing = present & (g_slot == 0)
    if untracked_thing.any() and int(g_cls[untracked_thing].min()) <= best_cls:
        return None  # a crowd region of an earlier (or the same) class is listed first: already crowd
    return int(best_slot)


class STQ(Metric):
    """Segmentation and Tracking Quality. `variant`: "kitti" (deeplab2) or "vipseg" (first-segment quirk).
    `things`: thing category ids (default: the vocabulary's isthing; KITTI-STEP uses (11, 13)).

    `compute()` returns STQ, AQ, SQ_IoU (0-1) and per sequence `STQ/<video_id>`, `AQ/<video_id>`,
    `SQ_IoU/<video_id>`. Each `update` is one sequence; a video must be updated once.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(
        self,
        categories: Sequence[Category],
        variant: Literal["kitti", "vipseg"] = "kitti",
        things: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if variant not in ("kitti", "vipseg"):
            raise ValueError(f"STQ variant must be 'kitti' or 'vipseg', got {variant!r}")
        self.variant = variant
        self.vocab = Vocabulary(categories, things)
        self._scratch = Scratch()
        n = self.vocab.num_classes + 1
        self.add_state("confusion", torch.zeros((n, n), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("seq_aq_sum", [], dist_reduce_fx="cat")
        self.add_state("seq_tracks", [], dist_reduce_fx="cat")
        self.add_state("seq_iou", [], dist_reduce_fx="cat")
        self.add_state("seq_names", [], dist_reduce_fx="cat")

    def update(self, pred: VideoPrediction, gt: VideoRecord) -> None:  # type: ignore[override]
        """Score one video as one sequence."""
        vocab, c1 = self.vocab, self.vocab.num_classes + 1
        slots = TrackSlots(gt)
        confusion = np.zeros(c1 * c1, dtype=np.int64)
        g_keys, p_keys, counts = [], [], []
        crowd_slot: int | None = None
        for t, (frame, labels, sem, inst) in enumerate(scored_frames(pred, gt, "panoptic")):
            where = f"video {gt.video_id!r} frame {gt.frames.names[frame]!r}"
            assert inst is not None
            g_slot, g_cls, p_inst, p_cls, cnt = segment_pairs(labels, sem, inst, vocab, slots, where, self._scratch)
            if self.variant == "vipseg":
                if t == 0:
                    crowd_slot = first_listed_track(g_slot, g_cls, slots, vocab)
                if crowd_slot is not None:
                    g_slot = np.where(g_slot == crowd_slot, 0, g_slot)
            np.add.at(confusion, g_cls * c1 + p_cls, cnt)
            # tracking term: GT thing pixels with a track, predicted thing pixels outside the GT crowd;
            # -1 = outside a mask, so pair counts give |g| (rows), |p| (columns) and TPA in one table
            g_thing = vocab.isthing[g_cls]
            gt_mask = g_thing & (g_slot != 0)
            pred_mask = vocab.isthing[p_cls] & ~(g_thing & ~gt_mask)
            keep = gt_mask | pred_mask
            g_keys.append(np.where(gt_mask, g_slot * c1 + g_cls, -1)[keep])
            p_keys.append(np.where(pred_mask, p_inst * c1 + p_cls, -1)[keep])
            counts.append(cnt[keep])
        aq_sum, n_tracks = 0.0, 0
        if counts:
            ga, pa, cnt = np.concatenate(g_keys), np.concatenate(p_keys), np.concatenate(counts)
            g_u, g_i = compact(ga)
            p_u, p_i = compact(pa)
            g_size = np.bincount(g_i, weights=cnt, minlength=len(g_u))
            p_size = np.bincount(p_i, weights=cnt, minlength=len(p_u))
            pair_u, pair_i = compact(g_i * len(p_u) + p_i)
            tpa = np.bincount(pair_i, weights=cnt, minlength=len(pair_u))
            pg, pp = pair_u // len(p_u), pair_u % len(p_u)
            real = (g_u[pg] >= 0) & (p_u[pp] >= 0)
            pg, pp, tpa = pg[real], pp[real], tpa[real]
            inner = tpa * (tpa / (tpa + (p_size[pp] - tpa) + (g_size[pg] - tpa)))
            per_gt = np.bincount(pg, weights=inner, minlength=len(g_u))
            tracks = g_u >= 0
            aq_sum = float(np.sum(per_gt[tracks] / g_size[tracks]))
            n_tracks = int(tracks.sum())
        confusion = confusion.reshape(c1, c1)
        confusion[vocab.void, :] = 0
        self.confusion += tensor(confusion, self.confusion)
        device = self.confusion.device
        self.seq_aq_sum.append(torch.tensor([aq_sum], dtype=torch.float64, device=device))
        self.seq_tracks.append(torch.tensor([n_tracks], dtype=torch.int64, device=device))
        self.seq_iou.append(torch.tensor([class_ious(confusion)], dtype=torch.float64, device=device))
        self.seq_names.append(encode_name(gt.video_id).to(device))

    def compute(self) -> dict[str, float]:
        aq_sums = cat_state(self.seq_aq_sum, torch.float64).cpu().numpy()
        tracks = cat_state(self.seq_tracks, torch.int64).cpu().numpy()
        seq_iou = cat_state(self.seq_iou, torch.float64).cpu().numpy()
        names = [decode_name(r) for r in cat_state(self.seq_names, torch.uint8, 128).cpu()]
        if len(set(names)) != len(names):
            raise ValueError("STQ: a video was updated more than once; each video is one sequence")
        aq = float(aq_sums.sum() / max(tracks.sum(), 1e-15))
        iou = class_ious(self.confusion.cpu().numpy())
        out = {"STQ": float(np.sqrt(aq * iou)), "AQ": aq, "SQ_IoU": iou}
        for name, s_aq, s_n, s_iou in zip(names, aq_sums, tracks, seq_iou):
            seq_aq = float(s_aq / max(s_n, 1e-15))
            out[f"STQ/{name}"] = float(np.sqrt(seq_aq * s_iou))
            out[f"AQ/{name}"] = seq_aq
            out[f"SQ_IoU/{name}"] = float(s_iou)
        return out


def from_records(
    gt: DatasetRecord,
    preds: list[VideoPrediction],
    *,
    variant: Literal["kitti", "vipseg"] | None = None,
    things: Sequence[int] | None = None,
    **kw: Any,
) -> dict[str, float]:
    """STQ of a whole split; the variant defaults by format (vipseg -> "vipseg", else "kitti")."""
    if variant is None:
        variant = "vipseg" if gt.format == "vipseg" else "kitti"
    metric = STQ(gt.categories, variant=variant, things=things, **kw)
    for video, pred in pair_videos(gt, preds):
        metric.update(pred, video)
    return metric.compute()
