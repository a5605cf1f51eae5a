"""DAVIS 2017 J&F (semi-supervised and unsupervised), equal to `davisvideochallenge/davis2017-evaluation`.

Predictions are turned into the label map a DAVIS PNG writer produces (as `VideoPrediction.instance_map`:
track id = PNG value, higher score pasted last). Official semantics kept:
- GT objects are 1..N with N = the largest id in the first annotated frame;
- semi: frames 1..T-2 of the annotated frames are scored, void is not used, a predicted id > N is an error;
- unsupervised: all frames scored, void pixels removed from both sides, proposals 1..max predicted id
  (<= max_proposals, padded with empty ones to N) matched to GT by Hungarian matching on mean (J + F) / 2;
- per object: mean, recall (> 0.5), decay (4 bins, uint8 indices); global = mean over all objects of all
  videos; J&F-Mean = (J-Mean + F-Mean) / 2.
States keep 6 numbers per object ([J mean, recall, decay, F mean, recall, decay]), not masks.

Speed (semi): each object is scored inside the box around its GT and predicted pixels (+1 px): J, DAVIS
boundaries and their disk dilations (cv2) on that crop only; prediction masks are pasted inside their boxes.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment
from torchmetrics import Metric

from vidseg.data.records import AnnotationFormatError, DatasetRecord, VideoPrediction, VideoRecord
from vidseg.metrics._boundary import boundary_radius, crop_j_and_f, davis_statistics, disk, frame_j_and_f
from vidseg.metrics._common import (
    cat_state,
    check_no_duplicate_videos,
    check_prediction,
    pair_videos,
    video_sort_key,
)

JF_KEYS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


def _paint(items: list[tuple[int, np.ndarray]], height: int, width: int) -> np.ndarray:
    """int32 label map (C or Fortran order) from (id, bool mask) pairs, later pairs winning. Masks are pasted into a
    buffer of their own memory order (pycocotools decodes in Fortran order, PNG decoders give C order;
    `np.copyto(where=)` is fast only with matching layouts); the buffers merge once at the end."""
    out_c = np.zeros((height, width), dtype=np.int32)
    out_f = np.zeros((height, width), dtype=np.int32, order="F")
    used_c = used_f = False
    for value, mask in items:
        if mask.flags.f_contiguous and not mask.flags.c_contiguous:
            np.copyto(out_f, value, where=mask)
            if used_c:  # the later mask wins: clear it from the other buffer
                np.copyto(out_c, 0, where=mask)
            used_f = True
        else:
            np.copyto(out_c, value, where=mask)
            if used_f:
                np.copyto(out_f, 0, where=mask)
            used_c = True
    if not used_f:
        return out_c
    return out_f if not used_c else out_c + out_f


def _common_layout(gt_labels: np.ndarray, pred_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both label maps as C-contiguous arrays without copies where possible: two Fortran-order maps are
    used transposed (J and DAVIS' boundary map are symmetric under transposition: right <-> lower
    neighbour, last row <-> last column, and the disk is symmetric)."""
    if gt_labels.flags.f_contiguous and pred_labels.flags.f_contiguous and not gt_labels.flags.c_contiguous:
        return gt_labels.T, pred_labels.T
    return np.ascontiguousarray(gt_labels), np.ascontiguousarray(pred_labels)


def gt_label_map(gt: VideoRecord, frame_pos: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Label map int32 [H, W] and void mask of the GT annotation at position `frame_pos` of the annotations
    list. Overlapping GT masks cannot be a DAVIS label map: error."""
    ann = gt.annotations[frame_pos]
    labels = ann.decode()
    total = 0
    for tid, mask in labels.masks.items():
        if mask.shape != (gt.height, gt.width):
            raise AnnotationFormatError(
                f"GT video {gt.video_id!r} frame {ann.frame} track {tid}: mask {mask.shape} differs from the "
                f"video size ({gt.height}, {gt.width})"
            )
        total += int(np.count_nonzero(mask))
    out = _paint([(tid, m.astype(bool, copy=False)) for tid, m in labels.masks.items()], gt.height, gt.width)
    if total != np.count_nonzero(out):
        raise AnnotationFormatError(
            f"GT video {gt.video_id!r} frame {ann.frame}: track masks overlap (J&F needs a label map)"
        )
    return out, labels.void


def prediction_label_map(pred: VideoPrediction, frame: int) -> np.ndarray:
    """The label map a DAVIS writer produces: track id per pixel, higher score pasted last (ties: later
    track wins), as `VideoPrediction.instance_map`."""
    items = [
        (trk.track_id, mask_utils.decode(trk.masks[frame]).view(bool))  # decode gives 0/1 uint8
        for trk in sorted(pred.tracks, key=lambda tr: tr.score)
        if trk.masks[frame] is not None
    ]
    return _paint(items, pred.height, pred.width)


Box = tuple[int, int, int, int]  # y0, y1, x0, x1 (end-exclusive)


def _mask_box(mask: np.ndarray) -> Box | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows) == 0:
        return None
    cols = np.flatnonzero(mask[rows[0] : rows[-1] + 1].any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _gt_masks(gt: VideoRecord, pos: int) -> dict[int, tuple[np.ndarray, Box]]:
    """Non-empty GT masks of the annotation at `pos` with their boxes; overlapping masks cannot be a DAVIS
    label map: error (tested only where two boxes intersect)."""
    ann = gt.annotations[pos]
    out: dict[int, tuple[np.ndarray, Box]] = {}
    for tid, mask in ann.decode().masks.items():
        if mask.shape != (gt.height, gt.width):
            raise AnnotationFormatError(
                f"GT video {gt.video_id!r} frame {ann.frame} track {tid}: mask {mask.shape} differs from the "
                f"video size ({gt.height}, {gt.width})"
            )
        mask = mask.astype(bool, copy=False)
        box = _mask_box(mask)
        if box is None:
            continue
        for other, (other_mask, (y0, y1, x0, x1)) in out.items():
            r = (slice(max(box[0], y0), min(box[1], y1)), slice(max(box[2], x0), min(box[3], x1)))
            if r[0].start < r[0].stop and r[1].start < r[1].stop and (mask[r] & other_mask[r]).any():
                raise AnnotationFormatError(
                    f"GT video {gt.video_id!r} frame {ann.frame}: track masks {other} and {tid} overlap (J&F "
                    "needs a label map)"
                )
        out[int(tid)] = (mask, box)
    return out


def _pred_labels(pred: VideoPrediction, frame: int) -> tuple[np.ndarray, dict[int, Box]]:
    """The DAVIS label map of a prediction frame (as `prediction_label_map`, Fortran order: masks are pasted
    inside their boxes) and the box of every pasted track's mask."""
    labels = np.zeros((pred.height, pred.width), dtype=np.int32, order="F")
    boxes: dict[int, Box] = {}
    for trk in sorted(pred.tracks, key=lambda tr: tr.score):
        rle = trk.masks[frame]
        if rle is None:
            continue
        x, y, bw, bh = (int(v) for v in mask_utils.toBbox(rle))
        if bw == 0 or bh == 0:
            continue
        box = (y, y + bh, x, x + bw)
        mask = mask_utils.decode(rle).view(bool)  # 0/1 uint8, Fortran order
        view = labels[box[0] : box[1], box[2] : box[3]]
        view[mask[box[0] : box[1], box[2] : box[3]]] = trk.track_id
        boxes[trk.track_id] = box
    return labels, boxes


def _semi_crops(
    pred: VideoPrediction, gt: VideoRecord, positions: list[int], num_objects: int, footprint: np.ndarray,
    where: str,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Semi-supervised J and F [N, T_scored], one object at a time inside the box around its GT and
    predicted pixels (plus a 1-pixel margin): the same values as full-frame DAVIS at a fraction of the cost."""
    h, w = gt.height, gt.width
    j_all, f_all = np.zeros((num_objects, len(positions))), np.zeros((num_objects, len(positions)))
    for t, pos in enumerate(positions):
        frame = gt.annotations[pos].frame
        g_masks = _gt_masks(gt, pos)
        p_labels, p_boxes = _pred_labels(pred, frame)
        for tid in sorted((k for k in p_boxes if k > num_objects), reverse=True):
            y0, y1, x0, x1 = p_boxes[tid]
            if (p_labels[y0:y1, x0:x1] == tid).any():
                raise AnnotationFormatError(
                    f"prediction for {where} frame {frame}: object id {tid} is higher than the number of GT "
                    f"objects ({num_objects}, the largest id in the first annotated frame)"
                )
        for k in range(1, num_objects + 1):
            boxes = [b for b in (g_masks.get(k, (None, None))[1], p_boxes.get(k)) if b is not None]
            if not boxes:
                j_all[k - 1, t] = f_all[k - 1, t] = 1.0  # both empty: J = 1 and F = 1 (DAVIS)
                continue
            y0, y1 = max(min(b[0] for b in boxes) - 1, 0), min(max(b[1] for b in boxes) + 1, h)
            x0, x1 = max(min(b[2] for b in boxes) - 1, 0), min(max(b[3] for b in boxes) + 1, w)
            g = g_masks[k][0][y0:y1, x0:x1] if k in g_masks else np.zeros((y1 - y0, x1 - x0), bool)
            p = np.ascontiguousarray(p_labels[y0:y1, x0:x1] == k)
            j_all[k - 1, t], f_all[k - 1, t] = crop_j_and_f(np.ascontiguousarray(g), p, y1 == h, x1 == w, footprint)
    return j_all, f_all


class DavisJF(Metric):
    """DAVIS J&F (0-1 scale). mode: "semi" (DAVIS 2017 semi-supervised) or "unsupervised"."""

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(
        self,
        mode: Literal["semi", "unsupervised"] = "semi",
        bound_th: float = 0.008,
        max_proposals: int = 20,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if mode not in ("semi", "unsupervised"):
            raise ValueError(f"DavisJF: mode must be 'semi' or 'unsupervised', got {mode!r}")
        self.mode = mode
        self.bound_th = bound_th
        self.max_proposals = max_proposals
        self.add_state("object_stats", default=[], dist_reduce_fx="cat")  # float64 [n_objects, 6]
        self.add_state("video_keys", default=[], dist_reduce_fx="cat")  # int64 [V]

    def update(self, pred: VideoPrediction, gt: VideoRecord) -> None:  # type: ignore[override]
        """Score one video and keep the per-object statistics."""
        check_prediction(pred, gt)
        per_frame_j, per_frame_f = self.video_j_and_f(pred, gt)
        rows = []
        for j, f in zip(per_frame_j, per_frame_f):
            rows.append([*davis_statistics(j), *davis_statistics(f)])
        self.object_stats.append(torch.tensor(rows, dtype=torch.float64).reshape(-1, 6))
        self.video_keys.append(torch.tensor([video_sort_key(gt.video_id)], dtype=torch.int64))

    def video_j_and_f(self, pred: VideoPrediction, gt: VideoRecord) -> tuple[np.ndarray, np.ndarray]:
        """Per GT object (1..N) and scored frame: J and F, both [N, T_scored] (matched proposals in
        unsupervised mode, in proposal order as the official code returns them)."""
        where = f"video {gt.video_id!r}"
        if not gt.annotations:
            raise AnnotationFormatError(f"GT {where}: no annotated frame")
        first_labels, first_void = gt_label_map(gt, 0)
        num_objects = int(first_labels.max(initial=0))
        positions = list(range(len(gt.annotations)))
        radius = boundary_radius(gt.height, gt.width, self.bound_th)
        if self.mode == "semi":
            if len(positions) < 3:
                raise AnnotationFormatError(
                    f"GT {where}: semi-supervised J&F scores annotated frames 1..T-2 and needs at least 3 "
                    f"annotated frames, got {len(positions)}"
                )
            return _semi_crops(pred, gt, positions[1:-1], num_objects, disk(radius), where)
        gt_objects = np.arange(1, num_objects + 1)
        frames = []
        for pos in positions:
            labels, void = (first_labels, first_void) if pos == 0 else gt_label_map(gt, pos)
            frame = gt.annotations[pos].frame
            pred_labels = prediction_label_map(pred, frame)
            if void is not None:
                pred_labels = np.where(void, 0, pred_labels)
                labels = np.where(void, 0, labels)
            frames.append((frame, *_common_layout(labels, pred_labels)))
        return self._unsupervised(frames, gt_objects, radius, where)

    def _unsupervised(self, frames: list, gt_objects: np.ndarray, radius: int, where: str) -> tuple[np.ndarray, ...]:
        n = len(gt_objects)
        num_props = max((int(p.max(initial=0)) for _, _, p in frames), default=0)
        if num_props > self.max_proposals:
            raise AnnotationFormatError(
                f"prediction for {where}: proposal id {num_props} is higher than the maximum number of "
                f"proposals ({self.max_proposals})"
            )
        k = max(num_props, n)  # fewer proposals than objects: padded with empty ones
        props = np.arange(1, k + 1)
        j = np.zeros((k, n, len(frames)))
        f = np.zeros((k, n, len(frames)))
        if n:
            for t, (_, labels, pred_labels) in enumerate(frames):
                j[:, :, t], f[:, :, t] = frame_j_and_f(labels, pred_labels, gt_objects, props, None, radius)
        if n == 0:
            return np.zeros((0, len(frames))), np.zeros((0, len(frames)))
        score = (np.mean(j, axis=2) + np.mean(f, axis=2)) / 2
        rows, cols = linear_sum_assignment(-score)
        return j[rows, cols, :], f[rows, cols, :]

    def compute(self) -> dict[str, float]:
        """Global J&F over all objects of all videos (0-1); NaN when no object was scored."""
        check_no_duplicate_videos(cat_state(self.video_keys, torch.int64).cpu(), type(self).__name__)
        stats = cat_state(self.object_stats, torch.float64, 6).cpu().numpy()
        if len(stats) == 0:
            return {k: float("nan") for k in JF_KEYS}
        means = stats.mean(axis=0)
        return {
            "J&F-Mean": float((means[0] + means[3]) / 2.0),
            "J-Mean": float(means[0]),
            "J-Recall": float(means[1]),
            "J-Decay": float(means[2]),
            "F-Mean": float(means[3]),
            "F-Recall": float(means[4]),
            "F-Decay": float(means[5]),
        }


def from_records(gt: DatasetRecord, preds: list[VideoPrediction], **kwargs: Any) -> dict[str, float]:
    """DAVIS J&F over a dataset split; kwargs go to `DavisJF` (mode, bound_th, max_proposals)."""
    metric = DavisJF(**kwargs)
    for video, pred in pair_videos(gt, preds):
        metric.update(pred, video)
    return metric.compute()
