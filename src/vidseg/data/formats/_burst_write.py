"""BURST writers (ground truth + exemplar files, results JSON) and the results reader; see `burst.py`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage

from vidseg.data.formats._vos_common import (
    JPEG_QUALITY,
    check_gt_video,
    normalise_rle,
    save_jpeg,
    video_lookup,
)
from vidseg.data.formats.burst import _area, _rle, _track_id, parse_sequences, sequence_entry
from vidseg.data.formats.common import check_unique, encode_rle, load_json, require_key, write_json_atomic
from vidseg.data.records import (
    RLE,
    AnnotationFormatError,
    Category,
    DatasetRecord,
    GroundTruthVideo,
    Point,
    TrackPrediction,
    VideoPrediction,
)

# `run.py` of BURST-benchmark: LVIS ids of the "common" classes (formats.md §8.6); the rest are uncommon.
_COMMON_IDS = (
    "4 13 34 35 36 41 45 58 60 78 79 81 91 95 99 118 126 133 139 154 174 185 211 221 229 235 237 276 299 "
    "347 371 382 392 428 429 452 475 480 502 544 579 621 625 642 699 714 717 729 747 779 805 829 852 896 "
    "926 937 961 979 980 982 993 1001 1018 1038 1057 1091 1097 1099 1115 1117 1122 1132 1135 1144 1155 1162 "
    "1215 1229"
)
COMMON_CATEGORY_IDS = frozenset(int(x) for x in _COMMON_IDS.split())


def _json_number(v: float) -> int | float:
    return int(v) if float(v).is_integer() else float(v)


def interior_point(mask: np.ndarray) -> Point:
    """The pixel farthest from the mask's boundary (distance-transform peak; first in row-major order)."""
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return Point(float(x), float(y))


def _bbox(mask: np.ndarray) -> list[int]:
    r = encode_rle(mask)
    box = mask_utils.toBbox({"size": r["size"], "counts": r["counts"].encode("ascii")})
    return [int(round(float(b))) for b in box]


def _gt_sequence(
    seq_id: int,
    video: GroundTruthVideo,
    ids: list[int],
    dataset_name: str,
    annotated: list[int],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(all_classes entry, first_frame_annotations entry) of one GT video with track ids `ids`."""
    names = [f"frame{t:04d}.jpg" for t in range(len(video.frames))]
    segs = []
    present: dict[int, list[int]] = {}
    for t in annotated:
        imap = video.instance_maps[t]
        seg_t = {}
        for k in ids:
            mask = imap == k
            if mask.any():
                seg_t[str(k)] = {"rle": encode_rle(mask)["counts"], "is_gt": True, "score": 1.0}
                present.setdefault(k, []).append(t)
        segs.append(seg_t)
    tracks = sorted(present)
    first_segs: list[dict[str, Any]] = [{} for _ in annotated]
    for k in tracks:
        where = f"GroundTruthVideo {video.video_id!r} track {k}"
        if k in video.points:
            frame, point = video.points[k]
            if frame not in present[k]:
                raise ValueError(
                    f"{where}: exemplar point at frame {frame}, which is not an annotated frame "
                    f"where the track is visible ({present[k]})"
                )
        else:
            frame = present[k][0]
            point = interior_point(video.instance_maps[frame] == k)
        mask = video.instance_maps[frame] == k
        entry = dict(segs[annotated.index(frame)][str(k)])
        entry.update(bbox=_bbox(mask), point={"x": _json_number(point.x), "y": _json_number(point.y)})
        first_segs[annotated.index(frame)][str(k)] = entry
    base = {
        "id": seq_id,
        "width": video.width,
        "height": video.height,
        "seq_name": video.video_id,
        "dataset": dataset_name,
        "fps": video.fps,
        "all_image_paths": names,
        "annotated_image_paths": [names[t] for t in annotated],
        "neg_category_ids": [],
        "not_exhaustive_category_ids": [],
        "track_category_ids": {str(k): video.track_categories[k] for k in tracks},
    }
    return {**base, "segmentations": segs}, {**base, "segmentations": first_segs}


def _filter_tracks(seq: dict[str, Any], keep: set[int]) -> dict[str, Any]:
    tcats = {k: c for k, c in seq["track_category_ids"].items() if c in keep}
    segs = [{k: v for k, v in s.items() if k in tcats} for s in seq["segmentations"]]
    return {**seq, "track_category_ids": tcats, "segmentations": segs}


def write_ground_truth(
    root: str | Path,
    split: str,
    videos: list[GroundTruthVideo],
    categories: list[Category],
    *,
    image_root: str | Path | None = None,
    dataset_name: str = "YFCC100M",
    annotate_every: int = 1,
    write_class_splits: bool = True,
    jpeg_quality: int = JPEG_QUALITY,
) -> Path:
    """Write frames `frame0000.jpg …` under `<image_root>/<split>/<dataset_name>/<video_id>/` and
    `<root>/<split>/all_classes.json` + `first_frame_annotations.json` (+ common/uncommon_classes.json).
    Every `annotate_every`-th frame is annotated (BURST val/test: 1 fps). Tracks visible on no annotated
    frame are not written. The exemplar of a track is its `GroundTruthVideo.points` entry (its frame must be
    annotated and show the track) or, if absent, the distance-transform peak of its first annotated mask.
    Sequence ids are 1..V in list order. Returns the all_classes.json path."""
    root = Path(root)
    img_root = Path(image_root) if image_root is not None else root
    if annotate_every < 1:
        raise ValueError(f"annotate_every must be >= 1, got {annotate_every}")
    check_unique((v.video_id for v in videos), "burst.write_ground_truth", "video_id")
    cat_ids = {c.id for c in categories}
    all_seqs, first_seqs = [], []
    for sid, video in enumerate(videos, start=1):
        ids = check_gt_video(video, cat_ids)
        annotated = list(range(0, len(video.frames), annotate_every))
        seq, first = _gt_sequence(sid, video, ids, dataset_name, annotated)
        for name, frame in zip(seq["all_image_paths"], video.frames):
            save_jpeg(img_root / split / dataset_name / video.video_id / name, frame, jpeg_quality)
        all_seqs.append(seq)
        first_seqs.append(first)
    cats = [{"id": c.id, "name": c.name, "synset": c.name, "def": "", "synonyms": [c.name]} for c in categories]
    folder = root / split
    path = write_json_atomic(folder / "all_classes.json", {"sequences": all_seqs, "categories": cats, "split": split})
    write_json_atomic(
        folder / "first_frame_annotations.json", {"sequences": first_seqs, "categories": cats, "split": split}
    )
    if write_class_splits:
        for fname, keep in (
            ("common_classes.json", cat_ids & COMMON_CATEGORY_IDS),
            ("uncommon_classes.json", cat_ids - COMMON_CATEGORY_IDS),
        ):
            write_json_atomic(
                folder / fname,
                {
                    "sequences": [_filter_tracks(s, keep) for s in all_seqs],
                    "categories": cats,
                    "split": split,
                },
            )
    return path


def _results_path(out: str | Path) -> Path:
    out = Path(out)
    return out if out.suffix == ".json" else out / "results.json"


def write_results(
    out: str | Path,
    predictions: list[VideoPrediction],
    dataset: DatasetRecord,
    *,
    exemplar_guided: bool = True,
) -> Path:
    """Write one BURST results JSON: a sequence per dataset video (GT id, dataset, seq_name, the GT's
    annotated_image_paths) with `{track_id: {"rle", "is_gt": false, "score"[, "category_id"]}}` per
    annotated frame; tracks absent (None or empty mask) on a frame are omitted. In exemplar-guided mode the
    track ids must be GT track ids of the sequence. `out` is a .json path or a folder (`results.json`)."""
    videos = video_lookup(dataset.videos)
    by_video: dict[str, VideoPrediction] = {}
    for pred in predictions:
        if pred.video_id not in videos:
            raise ValueError(f"prediction for video {pred.video_id!r}: not a sequence of {dataset.name}")
        if pred.video_id in by_video:
            raise ValueError(f"prediction for video {pred.video_id!r}: given twice")
        by_video[pred.video_id] = pred
    seqs = []
    for video in dataset.videos:
        pred = by_video.get(video.video_id)
        tracks = pred.tracks if pred is not None else []
        where = f"prediction for video {video.video_id!r}"
        check_unique((t.track_id for t in tracks), where, "track id")
        tcats: dict[str, int | None] = {}
        for trk in tracks:
            w = f"{where} track {trk.track_id}"
            gt = video.tracks.get(trk.track_id)
            if exemplar_guided and gt is None:
                raise ValueError(f"{w}: not a GT track of the sequence (exemplar-guided results need GT ids)")
            if len(trk.masks) != video.num_frames:
                raise ValueError(f"{w}: {len(trk.masks)} masks for {video.num_frames} frames")
            cat = trk.category_id if trk.category_id is not None else (gt.category_id if gt else None)
            if cat is None:
                raise ValueError(f"{w}: no category (needed in 'track_category_ids')")
            tcats[str(trk.track_id)] = cat
        segs = []
        for ann in video.annotations:
            seg_t: dict[str, Any] = {}
            for trk in tracks:
                m = trk.masks[ann.frame]
                if m is None:
                    continue
                rle = normalise_rle(m, (video.height, video.width), f"{where} track {trk.track_id} frame {ann.frame}")
                if _area(rle) == 0:
                    continue
                entry: dict[str, Any] = {"rle": rle["counts"], "is_gt": False, "score": float(trk.score)}
                if trk.category_id is not None:
                    entry["category_id"] = int(trk.category_id)
                seg_t[str(trk.track_id)] = entry
            segs.append(seg_t)
        paths = video.meta["all_image_paths"]
        seqs.append(
            {
                "id": video.meta["burst_id"],
                "dataset": video.meta["dataset"],
                "seq_name": video.meta["seq_name"],
                "width": video.width,
                "height": video.height,
                "annotated_image_paths": [paths[a.frame] for a in video.annotations],
                "segmentations": segs,
                "track_category_ids": tcats,
            }
        )
    split = dataset.meta.get("split_in_file") or dataset.split
    return write_json_atomic(_results_path(out), {"sequences": seqs, "split": split})


def read_results(path: str | Path, dataset: DatasetRecord) -> list[VideoPrediction]:
    """Read a BURST results JSON: one VideoPrediction per dataset video (dataset order; empty if absent),
    one TrackPrediction per track id (ascending) with masks at the listed frames, None elsewhere. A track's
    score is the max of its mask scores (default 1.0); its class is the masks' `category_id` if given, else
    its `track_category_ids` entry."""
    path = _results_path(path)
    data = load_json(path)
    seqs = parse_sequences(data, path)
    by_id = {int(v.meta["burst_id"]): v for v in dataset.videos}
    found: dict[str, VideoPrediction] = {}
    for i, seq in enumerate(seqs):
        where, video, index, pairs = sequence_entry(seq, i, path, by_id, "not a sequence id of the ground truth")
        tcats = require_key(seq, "track_category_ids", where, (dict,))
        masks: dict[int, list[RLE | None]] = {}
        scores: dict[int, float] = {}
        cats: dict[int, int | None] = {}
        for k, c in tcats.items():
            if not isinstance(c, int) and c is not None:
                raise AnnotationFormatError(f"{where}: track_category_ids[{k!r}] must be an int or null")
            cats[_track_id(k, f"{where} track_category_ids")] = c
        for img, seg in pairs:
            if img not in index:
                raise AnnotationFormatError(f"{where}: image {img!r} is not a frame of the sequence")
            if not isinstance(seg, dict):
                raise AnnotationFormatError(f"{where} ({img}): segmentation entry must be an object")
            for key, value in seg.items():
                w = f"{where} ({img}) track {key}"
                tid = _track_id(key, w)
                masks.setdefault(tid, [None] * video.num_frames)[index[img]] = _rle(value, video.height, video.width, w)
                score = value.get("score", 1.0)
                scores[tid] = max(scores.get(tid, float("-inf")), float(score))
                if "category_id" in value:
                    cats[tid] = int(value["category_id"])
        tracks = [
            TrackPrediction(track_id=t, category_id=cats.get(t), score=scores[t], masks=masks[t]) for t in sorted(masks)
        ]
        found[video.video_id] = VideoPrediction(
            video_id=video.video_id,
            height=video.height,
            width=video.width,
            frame_names=list(video.frames.names),
            tracks=tracks,
        )
    return [
        found.get(v.video_id)
        or VideoPrediction(video_id=v.video_id, height=v.height, width=v.width, frame_names=list(v.frames.names))
        for v in dataset.videos
    ]
