"""BURST HOTA / DetA / AssA (exemplar-guided), equal to `burstapi/eval/run.py` with its TrackEval copy.

Pre-processing as the official converter does: distractor categories are removed from the GT; merged
categories are remapped (`category_merge`); a predicted track takes the category of the GT track with the
same id (an id that is not a GT track of the video is an error; predictions for distractor tracks or GT
tracks without any mask are dropped); only annotated frames with at least one GT mask are timesteps; at most
`max_detections` predictions per frame (by score).
Similarity: the official code (BURST's bundled TrackEval and `trackeval` 1.3 `BURSTBase._load_raw_file`)
feeds `ann['bbox']` (integer pixel boxes of the masks) to pycocotools' `iou`, so HOTA is computed with *box*
IoU, not mask IoU; `similarity="box"` (default) reproduces it, `"mask"` gives the mask-IoU variant (what
reference/formats.md section 8.4 states). Per (video, class) HOTA is TrackEval's `HOTA.eval_sequence`
(19 alphas); states keep per class and alpha the sums of TP, FN, FP and AssA * TP (sum-reduced, DDP-safe).
Per class: HOTA/DetA/AssA = mean over alphas; reported = 100 * mean over evaluated classes (GT present),
and the same over the 78 'common' LVIS ids and over the others.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment
from torchmetrics import Metric

from vidseg.data.records import AnnotationFormatError, DatasetRecord, VideoPrediction, VideoRecord
from vidseg.metrics._common import (
    cat_state,
    check_no_duplicate_videos,
    check_prediction,
    gt_frame_rles,
    pair_videos,
    video_sort_key,
)

ALPHAS = np.arange(0.05, 0.99, 0.05)  # TrackEval's array_labels (19 values, same floats)
_EPS = np.finfo("float").eps

BURST_DISTRACTOR_IDS = frozenset(
    {20, 63, 108, 180, 188, 204, 212, 247, 303, 403, 407, 415, 490, 504, 507, 513, 529, 567, 569, 588, 672,
     691, 702, 708, 711, 720, 736, 737, 798, 813, 815, 827, 831, 851, 877, 883, 912, 971, 976, 1130, 1133,
     1134, 1169, 1184, 1220}
)  # fmt: skip
BURST_COMMON_IDS = frozenset(
    {4, 13, 34, 35, 36, 41, 45, 58, 60, 78, 79, 81, 91, 95, 99, 118, 126, 133, 139, 154, 174, 185, 211, 221,
     229, 235, 237, 276, 299, 347, 371, 382, 392, 428, 429, 452, 475, 480, 502, 544, 579, 621, 625, 642, 699,
     714, 717, 729, 747, 779, 805, 829, 852, 896, 926, 937, 961, 979, 980, 982, 993, 1001, 1018, 1038, 1057,
     1091, 1097, 1099, 1115, 1117, 1122, 1132, 1135, 1144, 1155, 1162, 1215, 1229}
)  # fmt: skip


def hota_sequence(
    gt_ids: Sequence[np.ndarray], tracker_ids: Sequence[np.ndarray], similarity: Sequence[np.ndarray]
) -> np.ndarray:
    """TrackEval `HOTA.eval_sequence` for one (sequence, class): per timestep contiguous GT/tracker ids and
    the similarity [G_t, P_t]. Returns float64 [4, 19]: TP, FN, FP, AssA (per alpha)."""
    out = np.zeros((4, len(ALPHAS)))
    num_gt_dets = sum(len(g) for g in gt_ids)
    num_tr_dets = sum(len(p) for p in tracker_ids)
    if num_tr_dets == 0:
        out[1] = num_gt_dets
        return out
    if num_gt_dets == 0:
        out[2] = num_tr_dets
        return out
    num_g = int(max(g.max(initial=-1) for g in gt_ids)) + 1
    num_p = int(max(p.max(initial=-1) for p in tracker_ids)) + 1
    potential = np.zeros((num_g, num_p))
    gt_count, tr_count = np.zeros((num_g, 1)), np.zeros((1, num_p))
    for g, p, sim in zip(gt_ids, tracker_ids, similarity):
        denom = sim.sum(0)[np.newaxis, :] + sim.sum(1)[:, np.newaxis] - sim
        sim_iou = np.zeros_like(sim)
        ok = denom > 0 + _EPS
        sim_iou[ok] = sim[ok] / denom[ok]
        potential[g[:, np.newaxis], p[np.newaxis, :]] += sim_iou
        gt_count[g] += 1
        tr_count[0, p] += 1
    alignment = potential / (gt_count + tr_count - potential)
    matches = np.zeros((len(ALPHAS), num_g, num_p))
    for g, p, sim in zip(gt_ids, tracker_ids, similarity):
        if len(g) == 0:
            out[2] += len(p)
            continue
        if len(p) == 0:
            out[1] += len(g)
            continue
        rows, cols = linear_sum_assignment(-(alignment[g[:, np.newaxis], p[np.newaxis, :]] * sim))
        ok = sim[rows, cols][np.newaxis, :] >= ALPHAS[:, np.newaxis] - _EPS  # [A, M]
        n_tp = ok.sum(axis=1)
        out[0] += n_tp
        out[1] += len(g) - n_tp
        out[2] += len(p) - n_tp
        a_idx, m_idx = np.nonzero(ok)
        np.add.at(matches, (a_idx, g[rows[m_idx]], p[cols[m_idx]]), 1)
    for a in range(len(ALPHAS)):
        ass_a = matches[a] / np.maximum(1, gt_count + tr_count - matches[a])
        out[3, a] = np.sum(matches[a] * ass_a) / np.maximum(1, out[0, a])
    return out


class BurstHOTA(Metric):
    """BURST exemplar-guided HOTA (0-100): HOTA, DetA, AssA over all evaluated classes, plus `_common` and
    `_uncommon` variants. category_ids: the vocabulary (LVIS ids); per-class values via `per_class()`."""

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(
        self,
        category_ids: Sequence[int],
        common_ids: Iterable[int] = BURST_COMMON_IDS,
        distractor_ids: Iterable[int] = BURST_DISTRACTOR_IDS,
        category_merge: Mapping[int, int] | None = None,
        max_detections: int = 300,
        similarity: Literal["box", "mask"] = "box",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if similarity not in ("box", "mask"):
            raise ValueError(f"BurstHOTA: similarity must be 'box' or 'mask', got {similarity!r}")
        self.similarity = similarity
        self.category_ids = [int(c) for c in category_ids]
        self._cat_index = {c: i for i, c in enumerate(self.category_ids)}
        self.common_ids = frozenset(int(c) for c in common_ids)
        self.distractor_ids = frozenset(int(c) for c in distractor_ids)
        self.category_merge = {int(k): int(v) for k, v in (category_merge or {}).items()}
        self.max_detections = max_detections
        num_c = len(self.category_ids)
        self.add_state("stats", default=torch.zeros(num_c, 4, len(ALPHAS), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("present", default=torch.zeros(num_c, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("video_keys", default=[], dist_reduce_fx="cat")

    def _similarity(self, gt_rles: list, pred_rles: list) -> np.ndarray:
        """[G, P] IoU: of the masks, or (official BURST code) of the integer pixel boxes of the masks."""
        if not gt_rles or not pred_rles:
            return np.zeros((len(gt_rles), len(pred_rles)))
        if self.similarity == "box":
            gt_objs: Any = np.atleast_2d(mask_utils.toBbox(gt_rles).astype(int)).astype(float)
            pred_objs: Any = np.atleast_2d(mask_utils.toBbox(pred_rles).astype(int)).astype(float)
        else:
            gt_objs, pred_objs = gt_rles, pred_rles
        sim = np.asarray(mask_utils.iou(gt_objs, pred_objs, [0] * len(pred_rles)), dtype=np.float64)
        return sim.reshape(len(gt_rles), len(pred_rles))

    def _gt_category(self, gt: VideoRecord, tid: int) -> int | None:
        """Merged category of a GT track; None for distractors."""
        cat = gt.tracks[tid].category_id
        if cat is None:
            raise AnnotationFormatError(f"GT video {gt.video_id!r} track {tid}: no category")
        cat = self.category_merge.get(int(cat), int(cat))
        if cat in self.distractor_ids:
            return None
        if cat not in self._cat_index:
            raise AnnotationFormatError(
                f"GT video {gt.video_id!r} track {tid}: category {cat} is not in the vocabulary"
            )
        return cat

    def update(self, pred: VideoPrediction, gt: VideoRecord) -> None:  # type: ignore[override]
        """Evaluate one video for every class it contains and add the per-class sums."""
        check_prediction(pred, gt)
        gt_cat = {tid: self._gt_category(gt, tid) for tid in gt.tracks}
        # timesteps: annotated frames with at least one (non-distractor) GT mask
        steps: list[tuple[int, dict[int, Any]]] = []
        for ann in gt.annotations:
            rles = gt_frame_rles(ann, gt)
            unknown = set(rles) - set(gt.tracks)
            if unknown:
                raise AnnotationFormatError(
                    f"GT video {gt.video_id!r} frame {ann.frame}: track(s) {sorted(unknown)} not in the track list"
                )
            rles = {tid: r for tid, r in rles.items() if gt_cat[tid] is not None}
            if rles:
                steps.append((ann.frame, rles))
        gt_with_masks = {tid for _, rles in steps for tid in rles}
        kept_preds = []
        for trk in pred.tracks:
            if trk.track_id not in gt.tracks:
                raise AnnotationFormatError(
                    f"prediction for video {pred.video_id!r}: track {trk.track_id} is not a GT track id of this "
                    "video (exemplar-guided results must use the GT track ids)"
                )
            if trk.track_id in gt_with_masks:  # distractor / never-annotated GT tracks: dropped officially
                kept_preds.append(trk)
        stats = torch.zeros_like(self.stats, device="cpu")
        present = torch.zeros_like(self.present, device="cpu")
        for cat in sorted({gt_cat[t] for t in gt_with_masks}):
            gt_tracks = sorted(t for t in gt_with_masks if gt_cat[t] == cat)
            preds_c = [trk for trk in kept_preds if gt_cat[trk.track_id] == cat]
            gt_index = {t: i for i, t in enumerate(gt_tracks)}
            pred_index = {trk.track_id: i for i, trk in enumerate(sorted(preds_c, key=lambda x: x.track_id))}
            gt_ids, tr_ids, sims = [], [], []
            for frame, rles in steps:
                g_tids = [t for t in rles if gt_cat[t] == cat]
                present_preds = [trk for trk in kept_preds if trk.masks[frame] is not None]
                if len(present_preds) > self.max_detections:
                    present_preds = sorted(present_preds, key=lambda x: x.score, reverse=True)
                    present_preds = present_preds[: self.max_detections]
                p_trks = [trk for trk in present_preds if trk.track_id in pred_index]
                g_rles = [rles[t] for t in g_tids]
                p_rles = [trk.masks[frame] for trk in p_trks]
                sim = self._similarity(g_rles, p_rles)
                gt_ids.append(np.array([gt_index[t] for t in g_tids], dtype=np.int64))
                tr_ids.append(np.array([pred_index[trk.track_id] for trk in p_trks], dtype=np.int64))
                sims.append(sim)
            k = self._cat_index[cat]
            res = hota_sequence(gt_ids, tr_ids, sims)
            stats[k, :3] += torch.from_numpy(res[:3])
            stats[k, 3] += torch.from_numpy(res[3] * res[0])  # AssA * TP: what combines over videos
            present[k] += 1
        self.stats += stats.to(self.stats.device)
        self.present += present.to(self.present.device)
        self.video_keys.append(torch.tensor([video_sort_key(gt.video_id)], dtype=torch.int64))

    def per_class(self) -> dict[int, dict[str, float]]:
        """Category id -> {HOTA, DetA, AssA} (0-100, mean over alphas) for every evaluated class."""
        check_no_duplicate_videos(cat_state(self.video_keys, torch.int64).cpu(), type(self).__name__)
        stats = self.stats.cpu().numpy()
        present = self.present.cpu().numpy()
        out = {}
        for k, cat in enumerate(self.category_ids):
            if present[k] == 0:
                continue
            tp, fn, fp, assa_tp = stats[k]
            ass_a = assa_tp / np.maximum(1.0, tp)
            det_a = tp / np.maximum(1, tp + fn + fp)
            hota = np.sqrt(det_a * ass_a)
            out[cat] = {"HOTA": 100 * hota.mean(), "DetA": 100 * det_a.mean(), "AssA": 100 * ass_a.mean()}
        return out

    def compute(self) -> dict[str, float]:
        """HOTA/DetA/AssA (0-100) over all, common and uncommon classes; NaN for a split without classes."""
        per_class = self.per_class()
        splits = {
            "": list(per_class),
            "_common": [c for c in per_class if c in self.common_ids],
            "_uncommon": [c for c in per_class if c not in self.common_ids],
        }
        out = {}
        for suffix, cats in splits.items():
            for name in ("HOTA", "DetA", "AssA"):
                vals = [per_class[c][name] for c in cats]
                out[name + suffix] = float(sum(vals) / len(vals)) if vals else float("nan")
        return out


def from_records(gt: DatasetRecord, preds: list[VideoPrediction], **kwargs: Any) -> dict[str, float]:
    """BURST HOTA over a dataset split (vocabulary: `gt.categories` unless `category_ids` given)."""
    kwargs.setdefault("category_ids", [c.id for c in gt.categories])
    metric = BurstHOTA(**kwargs)
    for video, pred in pair_videos(gt, preds):
        metric.update(pred, video)
    return metric.compute()
