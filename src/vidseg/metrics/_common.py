"""Helpers shared by the YTVIS-AP, J&F and HOTA metrics: input validation, GT RLEs, video pairing and
DDP-friendly state handling. Private to `vidseg.metrics`."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
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
        for t, rle in enumerate(trk.masks):
            if rle is None:
                continue
            size = rle.get("size") if isinstance(rle, dict) else None
            if size is None or [int(size[0]), int(size[1])] != [gt.height, gt.width]:
                raise AnnotationFormatError(
                    f"{where}: track {trk.track_id} frame {t}: RLE size {size} does not match the video "
                    f"size [{gt.height}, {gt.width}]"
                )


def gt_frame_rles(ann: FrameAnnotation, gt: VideoRecord) -> dict[int, RLE]:
    """GT track id -> compressed RLE of one annotated frame (tracks without a mask are left out). In-memory
    RLEs are used as they are (no decoding); label maps are decoded and encoded."""
    if ann.label_map is None and ann.rles is not None:
        out: dict[int, RLE] = {}
        for tid, rle in ann.rles.items():
            if rle is None:
                continue
            size = rle.get("size")
            if [int(size[0]), int(size[1])] != [gt.height, gt.width]:
                raise AnnotationFormatError(
                    f"GT video {gt.video_id!r} frame {ann.frame} track {tid}: RLE size {size} does not match "
                    f"the video size [{gt.height}, {gt.width}]"
                )
            out[tid] = rle
        return out
    labels = ann.decode()
    return {tid: mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for tid, m in labels.masks.items()}


def rle_areas(rles: Sequence[RLE]) -> np.ndarray:
    """int64 areas of a list of RLEs (empty list -> empty array)."""
    if not rles:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(mask_utils.area(list(rles)), dtype=np.int64).reshape(-1)


def rle_intersections(
    dts: Sequence[RLE], gts: Sequence[RLE], dt_areas: np.ndarray, gt_areas: np.ndarray
) -> np.ndarray:
    """Exact pixel intersections [D, G] (int64) from pycocotools' RLE IoU: with u = a_d + a_g - i and
    iou = i / u, i = iou (a_d + a_g) / (1 + iou); the float error is far below 0.5, so rounding is exact."""
    if len(dts) == 0 or len(gts) == 0:
        return np.zeros((len(dts), len(gts)), dtype=np.int64)
    iou = np.asarray(mask_utils.iou(list(dts), list(gts), [0] * len(gts)), dtype=np.float64)
    iou = iou.reshape(len(dts), len(gts))
    total = (dt_areas[:, None] + gt_areas[None, :]).astype(np.float64)
    return np.rint(iou * total / (1.0 + iou)).astype(np.int64)


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
