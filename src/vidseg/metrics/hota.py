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
Speed: the similarities of a whole video come from a few pycocotools calls grouped by (timestep, class);
`hota_sequence` works on flat pair tables (one bincount for the potential matches; only the Hungarian
matching loops over timesteps).
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
    grouped_rle_ious,
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
    num_steps: int,
    gt_step: np.ndarray,
    gt_id: np.ndarray,
    tr_step: np.ndarray,
    tr_id: np.ndarray,
    pair_gt: np.ndarray,
    pair_tr: np.ndarray,
    similarity: np.ndarray,
) -> np.ndarray:
    """TrackEval `HOTA.eval_sequence` for one (sequence, class) from flat tables.

    gt_step/gt_id [Ng]: timestep and contiguous GT id of every GT detection (sorted by step); tr_step/tr_id
    [Nt] the same for tracker detections; pair_gt/pair_tr/similarity [K]: every (GT det, tracker det)
    pair of one timestep with its similarity, grouped by timestep, row-major (GT det, then tracker det)
    inside a timestep. Returns float64 [4, 19]: TP, FN, FP, AssA (per alpha).
    The potential-match accumulation is one bincount (in timestep order, as TrackEval adds); only the
    per-timestep Hungarian matching loops."""
    out = np.zeros((4, len(ALPHAS)))
    if len(tr_step) == 0:
        out[1] = len(gt_step)
        return out
    if len(gt_step) == 0:
        out[2] = len(tr_step)
        return out
    num_g, num_p = int(gt_id.max()) + 1, int(tr_id.max()) + 1
    row_sum = np.bincount(pair_gt, weights=similarity, minlength=len(gt_step))
    col_sum = np.bincount(pair_tr, weights=similarity, minlength=len(tr_step))
    denom = col_sum[pair_tr] + row_sum[pair_gt] - similarity
    ok = denom > 0 + _EPS
    sim_iou = np.zeros_like(similarity)
    sim_iou[ok] = similarity[ok] / denom[ok]
    pair_key = gt_id[pair_gt] * num_p + tr_id[pair_tr]
    potential = np.bincount(pair_key, weights=sim_iou, minlength=num_g * num_p).reshape(num_g, num_p)
    gt_count = np.bincount(gt_id, minlength=num_g)[:, None].astype(np.float64)
    tr_count = np.bincount(tr_id, minlength=num_p)[None, :].astype(np.float64)
    alignment = potential / (gt_count + tr_count - potential)
    g_per_step = np.bincount(gt_step, minlength=num_steps)
    p_per_step = np.bincount(tr_step, minlength=num_steps)
    out[1] += g_per_step[p_per_step == 0].sum()  # timesteps without tracker detections: all GT missed
    out[2] += p_per_step[g_per_step == 0].sum()  # without GT detections: all tracker detections false
    g_start = np.concatenate([[0], np.cumsum(g_per_step)])
    p_start = np.concatenate([[0], np.cumsum(p_per_step)])
    pair_start = np.concatenate([[0], np.cumsum(g_per_step * p_per_step)])
    both = np.flatnonzero((g_per_step > 0) & (p_per_step > 0))
    m_g, m_p, m_sim = [], [], []  # the Hungarian matches of every timestep
    for g0, p0, k0, ng, npr in zip(
        g_start[both].tolist(), p_start[both].tolist(), pair_start[both].tolist(),
        g_per_step[both].tolist(), p_per_step[both].tolist(),
    ):  # fmt: skip
        g, p = gt_id[g0 : g0 + ng], tr_id[p0 : p0 + npr]
        sim = similarity[k0 : k0 + ng * npr].reshape(ng, npr)
        rows, cols = linear_sum_assignment(-(alignment[g[:, np.newaxis], p[np.newaxis, :]] * sim))
        m_g.append(g[rows])
        m_p.append(p[cols])
        m_sim.append(sim[rows, cols])
    empty = [np.zeros(0, np.int64)]
    matched_g, matched_p = np.concatenate(m_g or empty), np.concatenate(m_p or empty)
    matched = np.concatenate(m_sim or [np.zeros(0)])[np.newaxis, :] >= ALPHAS[:, np.newaxis] - _EPS  # [A, M]
    n_tp = matched.sum(axis=1)
    out[0] += n_tp
    out[1] += g_per_step[both].sum() - n_tp
    out[2] += p_per_step[both].sum() - n_tp
    a_idx, m_idx = np.nonzero(matched)
    flat = (a_idx * num_g + matched_g[m_idx]) * num_p + matched_p[m_idx]
    matches = np.bincount(flat, minlength=len(ALPHAS) * num_g * num_p).reshape(len(ALPHAS), num_g, num_p)
    ass_a = matches / np.maximum(1, gt_count[None] + tr_count[None] - matches)
    out[3] = np.sum(matches * ass_a, axis=(1, 2)) / np.maximum(1, out[0])
    return out


def box_ious(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """pycocotools `bbIou` (no crowd) of paired [K, 4] (x, y, w, h) boxes, with its operations and order."""
    (ax, ay, aw, ah), (bx, by, bw, bh) = boxes_a.T, boxes_b.T
    area_a, area_b = aw * ah, bw * bh
    w = np.minimum(aw + ax, bw + bx) - np.maximum(ax, bx)
    h = np.minimum(ah + ay, bh + by) - np.maximum(ay, by)
    inter = w * h
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area_a + area_b - inter)
    return np.where((w > 0) & (h > 0), iou, 0.0)


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

    def _pair_similarity(
        self, g_rles: list, g_group: np.ndarray, p_rles: list, p_group: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(GT det, tracker det, IoU) of every pair in the same (timestep, class) group, sorted by group and
        row-major inside it: of the masks, or (official BURST code) of the integer pixel boxes of the masks."""
        if self.similarity == "mask":
            return grouped_rle_ious(g_rles, g_group, p_rles, p_group)
        g_order, p_order = np.argsort(g_group, kind="stable"), np.argsort(p_group, kind="stable")
        g_sorted, p_sorted = g_group[g_order], p_group[p_order]
        groups = np.intersect1d(g_sorted, p_sorted)
        g_lo, g_hi = np.searchsorted(g_sorted, groups), np.searchsorted(g_sorted, groups, "right")
        p_lo, p_hi = np.searchsorted(p_sorted, groups), np.searchsorted(p_sorted, groups, "right")
        pairs_g = [np.repeat(g_order[a:b], d - c) for a, b, c, d in zip(g_lo, g_hi, p_lo, p_hi)]
        pairs_p = [np.tile(p_order[c:d], b - a) for a, b, c, d in zip(g_lo, g_hi, p_lo, p_hi)]
        pair_g = np.concatenate(pairs_g) if pairs_g else np.zeros(0, np.int64)
        pair_p = np.concatenate(pairs_p) if pairs_p else np.zeros(0, np.int64)
        if len(pair_g) == 0:
            return pair_g, pair_p, np.zeros(0)
        g_box = np.atleast_2d(mask_utils.toBbox(g_rles).astype(int)).astype(float)
        p_box = np.atleast_2d(mask_utils.toBbox(p_rles).astype(int)).astype(float)
        return pair_g, pair_p, box_ious(g_box[pair_g], p_box[pair_p])

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
        classes = sorted({gt_cat[t] for t in gt_with_masks})
        cls_of = {c: i for i, c in enumerate(classes)}
        gt_index = {t: i for i, t in enumerate(sorted(gt_with_masks))}  # per class: ranks among its tracks
        pred_index = {trk.track_id: 0 for trk in kept_preds}
        for c in classes:
            for i, t in enumerate(sorted(t for t in gt_with_masks if gt_cat[t] == c)):
                gt_index[t] = i
            for i, tid in enumerate(sorted(x.track_id for x in kept_preds if gt_cat[x.track_id] == c)):
                pred_index[tid] = i
        # flat detection tables over all timesteps and classes, grouped by (timestep, class)
        g_rles, g_group, g_id, p_rles, p_group, p_id = [], [], [], [], [], []
        num_c = len(classes)
        for step, (frame, rles) in enumerate(steps):
            for tid, rle in rles.items():
                g_rles.append(rle)
                g_group.append(step * num_c + cls_of[gt_cat[tid]])
                g_id.append(gt_index[tid])
            present_preds = [trk for trk in kept_preds if trk.masks[frame] is not None]
            if len(present_preds) > self.max_detections:
                present_preds = sorted(present_preds, key=lambda x: x.score, reverse=True)[: self.max_detections]
            for trk in present_preds:
                p_rles.append(trk.masks[frame])
                p_group.append(step * num_c + cls_of[gt_cat[trk.track_id]])
                p_id.append(pred_index[trk.track_id])
        g_group_a, p_group_a = np.asarray(g_group, np.int64), np.asarray(p_group, np.int64)
        g_id_a, p_id_a = np.asarray(g_id, np.int64), np.asarray(p_id, np.int64)
        pair_g, pair_p, sim = self._pair_similarity(g_rles, g_group_a, p_rles, p_group_a)
        # stable sorts by group keep the detections' order inside a (timestep, class)
        g_order, p_order = np.argsort(g_group_a, kind="stable"), np.argsort(p_group_a, kind="stable")
        g_rank, p_rank = np.empty_like(g_order), np.empty_like(p_order)
        g_rank[g_order], p_rank[p_order] = np.arange(len(g_order)), np.arange(len(p_order))
        pair_cls = g_group_a[pair_g] % max(num_c, 1)
        for c in classes:
            ci = cls_of[c]
            g_sel = g_order[g_group_a[g_order] % num_c == ci]
            p_sel = p_order[p_group_a[p_order] % num_c == ci]
            g_local, p_local = np.full(len(g_rles), -1), np.full(len(p_rles), -1)
            g_local[g_sel], p_local[p_sel] = np.arange(len(g_sel)), np.arange(len(p_sel))
            on = pair_cls == ci
            res = hota_sequence(
                len(steps), g_group_a[g_sel] // num_c, g_id_a[g_sel], p_group_a[p_sel] // num_c, p_id_a[p_sel],
                g_local[pair_g[on]], p_local[pair_p[on]], sim[on],
            )  # fmt: skip
            k = self._cat_index[c]
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
