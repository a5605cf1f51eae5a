"""Cityscapes-VPS results: ``<out>/pan_pred/<image_id>.png`` (RGB ids) + ``<out>/pred.json`` in GT annotation
order, as the official ``eval_vpq.py`` reads them (re-exported by `vidseg.data.formats.cityscapes_vps`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vidseg.data.formats._cityscapes_vps_parse import parse_segments
from vidseg.data.formats.common import load_json, require_key, write_json_atomic
from vidseg.data.formats.vps_common import (
    SegmentIds,
    check_listed_ids,
    check_panoptic_values,
    labels_from_ids,
    prediction_frames,
    prediction_panoptic_maps,
    read_id_png,
    write_id_png,
)
from vidseg.data.records import AnnotationFormatError, DatasetRecord, VideoPrediction, VideoRecord

FORMAT = "cityscapes_vps"


def _result_frames(video: VideoRecord) -> list[int]:
    """Frames that get results: the annotated frames (those of the image list when the split has no GT)."""
    return sorted(video.meta["image_ids"])


def write_results(out: Path, predictions: list[VideoPrediction], dataset: DatasetRecord, **options: Any) -> Path:
    """Write ``pan_pred/<image_id>.png`` (RGB ids; one id per (class, instance) pair of a video, so tubes
    and stuff keep their id) and ``pred.json`` in GT annotation order. Every GT video needs a prediction."""
    if options:
        raise TypeError(f"cityscapes_vps.write_results: unknown options {sorted(options)}")
    out = Path(out)
    where = f"{out} ({FORMAT} results)"
    by_id = {p.video_id: p for p in predictions}
    videos = {v.video_id: v for v in dataset.videos}
    unknown = sorted(set(by_id) - set(videos))
    missing = [v for v in videos if v not in by_id]
    if unknown or missing:
        raise AnnotationFormatError(f"{where}: predictions for unknown videos {unknown}, none for {missing}")
    things = {c.id for c in dataset.categories if c.isthing}
    known = [c.id for c in dataset.categories]
    entries: dict[str, dict] = {}
    for vid, video in videos.items():
        pred = by_id[vid]
        frames = _result_frames(video)
        positions = prediction_frames(pred, video, frames, where)
        maps = prediction_panoptic_maps(pred, where)
        seg_ids = SegmentIds()
        for f, p in zip(frames, positions):
            image_id = video.meta["image_ids"][f]
            sem, inst = maps[p]
            check_panoptic_values(sem, inst, known, f"{where}: {image_id}")
            ids, segments = seg_ids.encode(sem, inst, things)
            write_id_png(out / "pan_pred" / f"{image_id}.png", ids)
            entries[image_id] = {"image_id": image_id, "file_name": f"{image_id}.png", "segments_info": segments}
    write_json_atomic(out / "pred.json", {"annotations": [entries[i] for i in dataset.meta["annotation_order"]]})
    return out


def read_results(path: Path, dataset: DatasetRecord) -> list[VideoPrediction]:
    """Read ``pred.json`` + ``pan_pred/`` (folder or the pred.json path) into panoptic_maps: semantic =
    segment category, instance = segment id for thing categories, 0 for stuff. Ids and categories are
    checked like the official script (every PNG id listed and vice versa, categories known)."""
    path = Path(path)
    folder = path.parent if path.suffix == ".json" else path
    json_path = folder / "pred.json" if path.suffix != ".json" else path
    data = load_json(json_path)
    where = str(json_path)
    cat_ids = {c.id for c in dataset.categories}
    things = {c.id for c in dataset.categories if c.isthing}
    location = {}
    for video in dataset.videos:
        for f, iid in video.meta["image_ids"].items():
            location[iid] = (video, f)
    frames: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    for i, ann in enumerate(require_key(data, "annotations", where, list)):
        w = f"{where}: annotations[{i}]"
        iid = require_key(ann, "image_id", w, str)
        if iid not in location:
            raise AnnotationFormatError(f"{w}: image_id {iid!r} is not an annotated frame of the dataset")
        video, f = location[iid]
        segments = parse_segments(require_key(ann, "segments_info", w, list), cat_ids, w)
        png = folder / "pan_pred" / ann.get("file_name", f"{iid}.png")
        ids = read_id_png(png, (video.height, video.width))
        check_listed_ids(ids, (s[0] for s in segments), str(png))
        semantic, _ = labels_from_ids(ids, {s[0]: s[1] for s in segments}, {})
        thing_ids = np.array([s[0] for s in segments if s[1] in things], dtype=np.int64)
        instance = np.where(np.isin(ids, thing_ids), ids, 0).astype(np.int32)
        if f in frames.setdefault(video.video_id, {}):
            raise AnnotationFormatError(f"{w}: image_id {iid!r} appears twice")
        frames[video.video_id][f] = (semantic, instance)
    out = []
    for video in dataset.videos:
        got = frames.get(video.video_id, {})
        if sorted(got) != _result_frames(video):
            raise AnnotationFormatError(
                f"{where}: video {video.video_id} has predictions for frames {sorted(got)}, "
                f"expected the annotated frames {_result_frames(video)}"
            )
        out.append(
            VideoPrediction(
                video_id=video.video_id, height=video.height, width=video.width,
                frame_names=[video.frames.names[f] for f in sorted(got)],
                panoptic_maps=[got[f] for f in sorted(got)],
            )
        )  # fmt: skip
    return out
