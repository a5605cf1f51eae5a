"""YouTube-VIS / OVIS mask AP and AR, equal to the official `YTVOSeval` (youtubevos/cocoapi).

Per video, `update` computes the spatio-temporal IoU of every (prediction, GT) pair of one category,
runs COCO's greedy matching at the 10 IoU thresholds for the 4 area ranges, and keeps only per-detection
match/ignore flags, scores and ranks plus per-category GT counts. `compute` does COCO's accumulate/summarize.
Official quirks kept: maxDets counts per video *and* category, area ranges on the mean non-zero per-frame
area (all / <=128^2 / 128^2..256^2 / >=256^2), crowd GT ignored, -1 for empty means.

Speed: every RLE string of a video is decoded once (`_rle.DecodedRLEs`, compiled with numba), which gives the
areas; exact intersections are merged from run lengths for the pairs of the same (frame, category) only, and
COCO's greedy runs compiled for all thresholds and area ranges; `compute` is vectorised over thresholds. The
reference (pycocotools' COCOeval with ytvoseval's per-pair, per-frame IoU) gives equal values
(tests/metrics/test_ytvis_ap.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numba
import numpy as np
import torch
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
from vidseg.metrics._rle import DecodedRLEs, same_group_pairs

IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
YTVIS_AREA_RANGES: tuple[tuple[float, float], ...] = (
    (0.0, 1e5**2),
    (0.0, 128.0**2),
    (128.0**2, 256.0**2),
    (256.0**2, 1e5**2),
)
AREA_LABELS = ("all", "small", "medium", "large")
MAX_DETS = (1, 10, 100)


def match_group(
    ious: np.ndarray,
    gt_ignore: np.ndarray,
    gt_crowd: np.ndarray,
    dt_out_of_range: np.ndarray,
    iou_thresholds: np.ndarray = IOU_THRESHOLDS,
) -> tuple[np.ndarray, np.ndarray]:
    """COCO greedy matching of one (video, category) group, for every area range and IoU threshold at once.

    ious [D, G]: detections sorted by score (desc); gt_ignore [A, G] per area range; gt_crowd [G];
    dt_out_of_range [A, D]. Each detection takes the available GT with the highest IoU >= t (ties: the
    later GT, as COCO's `<` comparison does, in COCO's order: non-ignored GT first, each kind in input
    order), regular GT before ignored GT; crowd GT stays available. Returns (matched, ignored), bool
    [A, T, D]; an unmatched detection outside the area range is ignored.
    """
    thr = np.minimum(np.asarray(iou_thresholds, np.float64), 1 - 1e-10)
    return _greedy(
        np.ascontiguousarray(ious, np.float64),
        np.ascontiguousarray(gt_ignore, np.bool_),
        np.ascontiguousarray(gt_crowd, np.bool_),
        np.ascontiguousarray(dt_out_of_range, np.bool_),
        thr,
    )


@numba.njit(cache=True, nogil=True)
def _greedy(
    ious: np.ndarray, gt_ignore: np.ndarray, crowd: np.ndarray, dt_out: np.ndarray, thr: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """COCOeval.evaluateImg's matching loop for every area range and threshold."""
    num_a, num_g = gt_ignore.shape
    num_d, num_t = ious.shape[0], len(thr)
    matched = np.zeros((num_a, num_t, num_d), np.bool_)
    ignored = np.zeros((num_a, num_t, num_d), np.bool_)
    for a in range(num_a):
        ignore = gt_ignore[a]
        order = np.argsort(ignore, kind="mergesort")  # stable: non-ignored GT first
        for t in range(num_t):
            taken = np.zeros(num_g, np.bool_)
            for d in range(num_d):
                best, m = thr[t], -1
                for g in order:
                    if taken[g] and not crowd[g]:
                        continue
                    if m > -1 and not ignore[m] and ignore[g]:
                        break
                    if ious[d, g] < best:
                        continue
                    best, m = ious[d, g], g
                if m > -1:
                    matched[a, t, d] = True
                    ignored[a, t, d] = ignore[m]
                    taken[m] = True
                else:
                    ignored[a, t, d] = dt_out[a, d]
    return matched, ignored


class YTVISMeanAP(Metric):
    """Video mask AP/AR of YouTube-VIS and OVIS (0-1 scale, the 12 official `stats`).

    category_ids: the dataset's vocabulary (GT and predictions must use these ids; a category without
    non-ignored GT is excluded from the means, as officially). area_ranges: (lo, hi) for all/small/medium/
    large, inclusive bounds on the mean per-frame area.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(
        self,
        category_ids: Sequence[int],
        area_ranges: Sequence[tuple[float, float]] = YTVIS_AREA_RANGES,
        max_dets: Sequence[int] = MAX_DETS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if len(area_ranges) != 4 or len(max_dets) != 3:
            raise ValueError("YTVISMeanAP: area_ranges needs 4 (lo, hi) pairs and max_dets 3 values")
        self.category_ids = [int(c) for c in category_ids]
        self._cat_index = {c: i for i, c in enumerate(self.category_ids)}
        self.area_ranges = np.asarray(area_ranges, dtype=np.float64)
        self.max_dets = [int(m) for m in max_dets]
        n_flags = len(self.area_ranges) * len(IOU_THRESHOLDS)
        self._n_flags = n_flags
        self.add_state("det_meta", default=[], dist_reduce_fx="cat")  # int64 [N, 3]: cat idx, video key, rank
        self.add_state("det_score", default=[], dist_reduce_fx="cat")  # float64 [N]
        self.add_state("det_flags", default=[], dist_reduce_fx="cat")  # uint8 [N, 2*A*T]: matched, ignored
        self.add_state("video_keys", default=[], dist_reduce_fx="cat")  # int64 [V]
        self.add_state(
            "gt_count",
            default=torch.zeros(len(self.category_ids), len(self.area_ranges), dtype=torch.int64),
            dist_reduce_fx="sum",
        )

    # ------------------------------------------------------------------------------------------- update
    def _category(self, cat: int | None, where: str) -> int:
        if cat is None or int(cat) not in self._cat_index:
            raise AnnotationFormatError(f"{where}: category {cat!r} is not in the vocabulary {self.category_ids}")
        return self._cat_index[int(cat)]

    def update(self, pred: VideoPrediction, gt: VideoRecord) -> None:  # type: ignore[override]
        """Evaluate one video and keep its per-detection match flags."""
        check_prediction(pred, gt)
        gt_ids = list(gt.tracks)
        gt_pos = {tid: i for i, tid in enumerate(gt_ids)}
        gt_cat = np.array(
            [self._category(gt.tracks[t].category_id, f"GT video {gt.video_id!r} track {t}") for t in gt_ids],
            dtype=np.int64,
        )
        gt_crowd = np.array([bool(gt.tracks[t].iscrowd) for t in gt_ids], dtype=bool)
        dt_cat = np.array(
            [
                self._category(tr.category_id, f"prediction for video {pred.video_id!r} track {tr.track_id}")
                for tr in pred.tracks
            ],
            dtype=np.int64,
        )
        dt_score = np.array([float(tr.score) for tr in pred.tracks], dtype=np.float64)
        num_d, num_g = len(pred.tracks), len(gt_ids)
        # every RLE of the video, grouped by (annotated frame, category): a few IoU calls that also give areas
        g_rles: list = []
        d_rles: list = []
        g_idx, g_pos, d_pos, d_count, frames = [], [], [], [], []
        for pos, ann in enumerate(gt.annotations):
            frame_rles = gt_frame_rles(ann, gt)
            try:
                g_idx += [gt_pos[tid] for tid in frame_rles]
            except KeyError:
                raise AnnotationFormatError(
                    f"GT video {gt.video_id!r} frame {ann.frame}: track(s) "
                    f"{sorted(set(frame_rles) - set(gt_pos))} not in the track list"
                ) from None
            g_rles += frame_rles.values()
            g_pos += [pos] * len(frame_rles)
            frames.append(ann.frame)
        every_frame = frames == list(range(gt.num_frames))
        for trk in pred.tracks:
            masks = trk.masks if every_frame else [trk.masks[f] for f in frames]
            present = [p for p, rle in enumerate(masks) if rle is not None]
            d_rles += [masks[p] for p in present]
            d_pos += present
            d_count.append(len(present))
        num_c = len(self.category_ids)
        g_idx_a = np.asarray(g_idx, np.int64)
        d_idx_a = np.repeat(np.arange(num_d), d_count)
        d_pos_a = np.asarray(d_pos, np.int64)
        # every mask of the video decoded once; intersections only for same (frame, category) pairs
        decoded = DecodedRLEs(d_rles + g_rles, gt.height, gt.width)
        n_dr = len(d_rles)

        def mask_name(i: int) -> str:
            if i < n_dr:
                trk = pred.tracks[int(d_idx_a[i])]
                return f"prediction for video {pred.video_id!r} track {trk.track_id} frame {frames[d_pos_a[i]]}"
            return f"GT video {gt.video_id!r} track {gt_ids[g_idx_a[i - n_dr]]} frame {frames[g_pos[i - n_dr]]}"

        decoded.check(mask_name)
        d_area, g_area = decoded.area[:n_dr], decoded.area[n_dr:]
        pd, pg = same_group_pairs(
            d_pos_a * num_c + dt_cat[d_idx_a], np.asarray(g_pos, np.int64) * num_c + gt_cat[g_idx_a]
        )
        pair_inter = decoded.intersections(pd, pg + n_dr)
        gt_area_sum = np.bincount(g_idx_a, weights=g_area, minlength=num_g).astype(np.int64)  # exact: < 2**53
        gt_nonzero = np.bincount(g_idx_a[g_area > 0], minlength=num_g)
        dt_area_sum = np.bincount(d_idx_a, weights=d_area, minlength=num_d).astype(np.int64)
        dt_nonzero = np.bincount(d_idx_a[d_area > 0], minlength=num_d)
        inter = np.zeros((num_d, num_g), dtype=np.int64)
        np.add.at(inter, (d_idx_a[pd], g_idx_a[pg]), pair_inter)
        union = dt_area_sum[:, None] + gt_area_sum[None, :] - inter
        ious = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        gt_avg = np.where(gt_nonzero > 0, gt_area_sum / np.maximum(gt_nonzero, 1), 0.0)
        dt_avg = np.where(dt_nonzero > 0, dt_area_sum / np.maximum(dt_nonzero, 1), 0.0)

        key = video_sort_key(gt.video_id)
        lo, hi = self.area_ranges[:, 0:1], self.area_ranges[:, 1:2]  # [A, 1]
        gt_ignore_all = gt_crowd[None, :] | (gt_avg[None, :] < lo) | (gt_avg[None, :] > hi)  # [A, G]
        dt_out_all = (dt_avg[None, :] < lo) | (dt_avg[None, :] > hi)  # [A, D]
        metas, scores, flags = [], [], []
        gt_count = np.zeros(tuple(self.gt_count.shape), np.int64)
        for c in np.union1d(gt_cat, dt_cat):
            g_sel = np.flatnonzero(gt_cat == c)
            d_sel = np.flatnonzero(dt_cat == c)
            d_sel = d_sel[np.argsort(-dt_score[d_sel], kind="mergesort")][: self.max_dets[-1]]
            gt_count[c] += (~gt_ignore_all[:, g_sel]).sum(axis=1)
            if len(d_sel) == 0:
                continue
            matched, ignored = match_group(
                ious[np.ix_(d_sel, g_sel)], gt_ignore_all[:, g_sel], gt_crowd[g_sel], dt_out_all[:, d_sel]
            )
            m = matched.reshape(-1, len(d_sel)).T  # [D, A*T]
            i = ignored.reshape(-1, len(d_sel)).T
            flags.append(np.concatenate([m, i], axis=1))
            metas.append(np.stack([np.full(len(d_sel), c), np.full(len(d_sel), key), np.arange(len(d_sel))], axis=1))
            scores.append(dt_score[d_sel])
        if metas:
            self.det_meta.append(torch.from_numpy(np.concatenate(metas).astype(np.int64)))
            self.det_score.append(torch.from_numpy(np.concatenate(scores)))
            self.det_flags.append(torch.from_numpy(np.concatenate(flags).astype(np.uint8)))
        self.video_keys.append(torch.tensor([key], dtype=torch.int64))
        self.gt_count += torch.from_numpy(gt_count).to(self.gt_count.device)

    # ------------------------------------------------------------------------------------------ compute
    def _accumulate(self) -> tuple[np.ndarray, np.ndarray]:
        """COCO accumulate: precision [T, R, K, A, M] and recall [T, K, A, M], -1 where undefined."""
        check_no_duplicate_videos(cat_state(self.video_keys, torch.int64).cpu(), type(self).__name__)
        meta = cat_state(self.det_meta, torch.int64, 3).cpu().numpy()
        score = cat_state(self.det_score, torch.float64).cpu().numpy()
        flags = cat_state(self.det_flags, torch.uint8, 2 * self._n_flags).cpu().numpy().astype(bool)
        gt_count = self.gt_count.cpu().numpy()
        num_t, num_r, num_k = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(self.category_ids)
        num_a, num_m = len(self.area_ranges), len(self.max_dets)
        precision = -np.ones((num_t, num_r, num_k, num_a, num_m))
        recall = -np.ones((num_t, num_k, num_a, num_m))
        for k in range(num_k):
            sel = np.flatnonzero(meta[:, 0] == k)
            # concatenation in (video, rank) order, then a stable sort by descending score (COCO's mergesort)
            sel = sel[np.lexsort((meta[sel, 2], meta[sel, 1], -score[sel]))]
            for a in range(num_a):
                npig = int(gt_count[k, a])
                if npig == 0:
                    continue
                cols = slice(a * num_t, (a + 1) * num_t)
                for mi, max_det in enumerate(self.max_dets):
                    rows = sel[meta[sel, 2] < max_det]
                    dtm = flags[rows, : self._n_flags][:, cols].T  # [T, nd]
                    dtig = flags[rows, self._n_flags :][:, cols].T
                    nd = dtm.shape[1]
                    if nd == 0:
                        recall[:, k, a, mi] = 0
                        precision[:, :, k, a, mi] = 0
                        continue
                    tp_sum = np.cumsum(dtm & ~dtig, axis=1).astype(float)
                    fp_sum = np.cumsum(~dtm & ~dtig, axis=1).astype(float)
                    rc = tp_sum / npig
                    pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
                    recall[:, k, a, mi] = rc[:, -1]
                    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                    inds = np.stack([np.searchsorted(rc[t], RECALL_THRESHOLDS, side="left") for t in range(num_t)])
                    valid = inds < nd
                    q = np.where(valid, np.take_along_axis(pr, np.minimum(inds, nd - 1), axis=1), 0.0)
                    precision[:, :, k, a, mi] = q
        return precision, recall

    @staticmethod
    def _mean_valid(s: np.ndarray) -> float:
        return -1.0 if not (s > -1).any() else float(np.mean(s[s > -1]))

    def _summarize(self, precision: np.ndarray, recall: np.ndarray) -> dict[str, float]:
        def pick(ap: bool, iou_thr: float | None = None, area: int = 0, max_det: int = 100) -> float:
            m = self.max_dets.index(max_det) if max_det in self.max_dets else 2
            s = precision if ap else recall
            if iou_thr is not None:
                s = s[np.where(iou_thr == IOU_THRESHOLDS)[0]]
            s = s[..., area, m]
            return self._mean_valid(s)

        top = self.max_dets[-1]
        return {
            "AP": pick(True, None, 0, top),
            "AP50": pick(True, 0.5, 0, top),
            "AP75": pick(True, 0.75, 0, top),
            "AP_s": pick(True, None, 1, top),
            "AP_m": pick(True, None, 2, top),
            "AP_l": pick(True, None, 3, top),
            "AR1": pick(False, None, 0, self.max_dets[0]),
            "AR10": pick(False, None, 0, self.max_dets[1]),
            "AR100": pick(False, None, 0, top),
            "AR_s": pick(False, None, 1, top),
            "AR_m": pick(False, None, 2, top),
            "AR_l": pick(False, None, 3, top),
        }

    def compute(self) -> dict[str, float]:
        """The 12 official stats (0-1; -1 where nothing is valid)."""
        precision, recall = self._accumulate()
        return self._summarize(precision, recall)

    def per_category_ap(self) -> dict[int, float]:
        """Category id -> AP (IoU .50:.95, area all, maxDets 100); -1 for a category without GT."""
        precision, _ = self._accumulate()
        return {c: self._mean_valid(precision[:, :, k, 0, -1]) for k, c in enumerate(self.category_ids)}


def from_records(gt: DatasetRecord, preds: list[VideoPrediction], **kwargs: Any) -> dict[str, float]:
    """YouTube-VIS AP/AR over a dataset split (vocabulary: `gt.categories` unless `category_ids` given)."""
    kwargs.setdefault("category_ids", [c.id for c in gt.categories])
    metric = YTVISMeanAP(**kwargs)
    for video, pred in pair_videos(gt, preds):
        metric.update(pred, video)
    return metric.compute()
