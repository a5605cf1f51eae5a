"""Helpers shared by the YTVIS-AP, J&F and HOTA metrics: input validation, GT RLEs, video pairing and
DDP-friendly state handling. Private to `vidseg.metrics`."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from vidseg.data.records import (
    RLE,
    AnnotationFormatError,
    DatasetRecord,
    FrameAnnotation,
    VideoPrediction,
    VideoRecord,
)


def video_sort_key(video_id: str) -> int:
    """int64 key of a video: the id itself when it is a decimal integer (YouTube-VIS/BURST ids, so that
    ordering matches the official toolkits' sorted integer ids), else a stable 62-bit hash."""
    if video_id.isdigit() and int(video_id) < 2**62:
        return int(video_id)
    digest = hashlib.blake2b(video_id.encode(), digest_size=8).digest()
    return 2**62 + (int.from_bytes(digest, "little") % 2**62)


def check_prediction(pred: VideoPrediction, gt: VideoRecord) -> None:
    """Raise AnnotationFormatError unless `pred` fits `gt`: same video and size, one mask entry per frame,
    RLE sizes equal to the frame size, unique positive track ids."""
    where = f"prediction for video {pred.video_id!r}"
    if pred.video_id != gt.video_id:
        raise AnnotationFormatError(f"{where}: paired with GT video {gt.video_id!r}")
    if (pred.height, pred.width) != (gt.height, gt.width):
        raise AnnotationFormatError(
            f"{where}: size {pred.height}x{pred.width} differs from the GT size {gt.height}x{gt.width}"
        )
    seen: set[int] = set()
    hw = [gt.height, gt.width]
    for trk in pred.tracks:
        if trk.track_id in seen:
            raise AnnotationFormatError(f"{where}: duplicate track id {trk.track_id}")
        if trk.track_id <= 0:
            raise AnnotationFormatError(f"{where}: track id {trk.track_id} must be positive")
        seen.add(trk.track_id)
        if len(trk.masks) != gt.num_frames:
            raise AnnotationFormatError(
                f"{where}: track {trk.track_id} has {len(trk.masks)} mask entries, the video has "
                f"{gt.num_frames} frames (one entry per frame, None where absent)"
            )
        # fast screen (a list size equal to [h, w]); anything else gets the full check
        suspects = [
            t for t, rle in enumerate(trk.masks) if rle is not None and (type(rle) is not dict or rle.get("size") != hw)
        ]
        for t in suspects:
            rle = trk.masks[t]
            size = rle.get("size") if isinstance(rle, dict) else None
            if not _is_size(size, hw):
                raise AnnotationFormatError(
                    f"{where}: track {trk.track_id} frame {t}: RLE size {size} does not match the video "
                    f"size [{gt.height}, {gt.width}]"
                )


def _is_size(size: Any, hw: list[int]) -> bool:
    """Whether an RLE's declared size equals [h, w] (any integer-like pair)."""
    return size is not None and [int(size[0]), int(size[1])] == hw


def gt_frame_rles(ann: FrameAnnotation, gt: VideoRecord) -> dict[int, RLE]:
    """GT track id -> compressed RLE of one annotated frame (tracks without a mask are left out). In-memory
    RLEs are used as they are (no decoding); label maps are decoded and encoded."""
    if ann.label_map is None and ann.rles is not None:
        hw = [gt.height, gt.width]
        out: dict[int, RLE] = {tid: rle for tid, rle in ann.rles.items() if rle is not None}
        for tid, rle in out.items():
            size = rle.get("size")
            if size != hw and not _is_size(size, hw):
                raise AnnotationFormatError(
                    f"GT video {gt.video_id!r} frame {ann.frame} track {tid}: RLE size {size} does not match "
                    f"the video size [{gt.height}, {gt.width}]"
                )
        return out
    labels = ann.decode()
    return {tid: mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for tid, m in labels.masks.items()}


def grouped_rle_ious(
    d_rles: Sequence[RLE], d_group: np.ndarray, g_rles: Sequence[RLE], g_group: np.ndarray, max_cells: int = 512
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pycocotools IoU of every (d, g) pair of RLEs with the same group number (e.g. the same frame and
    class), in a few `mask_utils.iou` calls instead of one per group.

    Each RLE is passed with its group folded into its declared width (``size = [h, w + 1 + group]``; the
    counts are untouched): pycocotools computes the exact IoU only for pairs of equal size whose boxes
    overlap (the box test does not read the width), so pairs of different groups cost a box test and are
    discarded here. Groups go in chunks of about `max_cells` matrix cells (fewer calls vs. fewer box tests).
    Returns (d index, g index, IoU) of the same-group pairs.
    """
    d_group, g_group = np.asarray(d_group, np.int64), np.asarray(g_group, np.int64)
    out_d, out_g, out_iou = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    for d_sel, g_sel, d_grp, g_grp in _group_chunks(d_group, g_group, max_cells):
        dts = [
            {"size": [d_rles[i]["size"][0], d_rles[i]["size"][1] + 1 + k], "counts": d_rles[i]["counts"]}
            for i, k in zip(d_sel.tolist(), d_grp.tolist())
        ]
        gts = [
            {"size": [g_rles[j]["size"][0], g_rles[j]["size"][1] + 1 + k], "counts": g_rles[j]["counts"]}
            for j, k in zip(g_sel.tolist(), g_grp.tolist())
        ]
        iou = np.asarray(mask_utils.iou(dts, gts, [0] * len(gts)), dtype=np.float64).reshape(len(dts), len(gts))
        rows, cols = np.nonzero(d_grp[:, None] == g_grp[None, :])
        out_d.append(d_sel[rows])
        out_g.append(g_sel[cols])
        out_iou.append(iou[rows, cols])
    return np.concatenate(out_d), np.concatenate(out_g), np.concatenate(out_iou)


def _group_chunks(
    d_group: np.ndarray, g_group: np.ndarray, max_cells: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Chunks of consecutive groups of about `max_cells` (d, g) cells: (d indices, g indices, their groups),
    each side sorted by group; chunks without a d or without a g are skipped."""
    if len(d_group) == 0 or len(g_group) == 0:
        return
    d_order, g_order = np.argsort(d_group, kind="stable"), np.argsort(g_group, kind="stable")
    d_sorted, g_sorted = d_group[d_order], g_group[g_order]
    groups = np.unique(d_sorted)
    num_chunks = min(len(groups), max(1, int(np.sqrt(len(d_group) * len(g_group) / max_cells))))
    bounds = [int(chunk[0]) for chunk in np.array_split(groups, num_chunks)] + [int(groups[-1]) + 1]
    d_cut = np.searchsorted(d_sorted, bounds).tolist()
    g_cut = np.searchsorted(g_sorted, bounds).tolist()
    for c in range(num_chunks):
        if d_cut[c] < d_cut[c + 1] and g_cut[c] < g_cut[c + 1]:
            d_part, g_part = slice(d_cut[c], d_cut[c + 1]), slice(g_cut[c], g_cut[c + 1])
            yield d_order[d_part], g_order[g_part], d_sorted[d_part], g_sorted[g_part]


def empty_prediction(gt: VideoRecord) -> VideoPrediction:
    """The prediction standing for 'nothing predicted' on a GT video without a prediction."""
    return VideoPrediction(
        video_id=gt.video_id, height=gt.height, width=gt.width, frame_names=list(gt.frames.names)
    )


def pair_videos(
    gt: DatasetRecord, preds: Sequence[VideoPrediction]
) -> list[tuple[VideoRecord, VideoPrediction]]:
    """Pair predictions with GT videos by video_id (GT order). A prediction for a video not in the GT, or two
    predictions for one video, is an error; a GT video without prediction gets an empty prediction."""
    by_id: dict[str, VideoPrediction] = {}
    gt_ids = {v.video_id for v in gt.videos}
    for p in preds:
        if p.video_id not in gt_ids:
            raise AnnotationFormatError(
                f"prediction for video {p.video_id!r}: no such video in GT dataset {gt.name!r} ({gt.split})"
            )
        if p.video_id in by_id:
            raise AnnotationFormatError(f"two predictions for video {p.video_id!r}")
        by_id[p.video_id] = p
    return [(v, by_id.get(v.video_id) or empty_prediction(v)) for v in gt.videos]


def cat_state(state: Any, dtype: torch.dtype, width: int | None = None) -> torch.Tensor:
    """A 'cat' state as one tensor, whether it is still a list (single process) or already concatenated
    (after DDP sync). Empty -> a [0] / [0, width] tensor of `dtype`."""
    if isinstance(state, torch.Tensor):
        return state
    if len(state) == 0:
        return torch.zeros((0,) if width is None else (0, width), dtype=dtype)
    return torch.cat(list(state), dim=0)


def check_no_duplicate_videos(keys: torch.Tensor, metric: str) -> None:
    """A video counted twice (e.g. a DDP sampler padding the dataset) would bias the result: refuse."""
    if keys.numel() != torch.unique(keys).numel():
        vals, counts = torch.unique(keys, return_counts=True)
        dup = vals[counts > 1].tolist()
        raise ValueError(
            f"{metric}: video key(s) {dup[:5]} were updated more than once; each video must be evaluated "
            "exactly once (disable sampler padding for evaluation)"
        )
