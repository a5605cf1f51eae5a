"""YouTube-VIS 2019/2021 and OVIS: instance JSON with per-frame segmentations (formats.md §1).

Default layout: `<root>/<split>/instances.json` and frames at `<root>/<split>/JPEGImages/<file_names>`;
`ann_file=` / `image_root=` (absolute, or relative to `root`) select other releases, e.g. 2019
`ann_file="train.json", image_root="train/JPEGImages"` or OVIS `ann_file="annotations_train.json",
image_root="train"`. Validation/test files without annotations give videos with no annotated frames.
"""

from __future__ import annotations

import os
from collections.abc import Container
from pathlib import Path
from typing import Any

from pycocotools import mask as mask_utils

from vidseg.data.formats._vos_common import (
    JPEG_QUALITY,
    check_gt_video,
    normalise_rle,
    save_jpeg,
    uncompressed_rle,
    video_lookup,
)
from vidseg.data.formats.common import (
    check_unique,
    encode_rle,
    is_number,
    load_json,
    require_int,
    require_key,
    to_compressed_rles,
    write_json_atomic,
)
from vidseg.data.records import (
    RLE,
    AnnotationFormatError,
    Category,
    DatasetRecord,
    FrameAnnotation,
    FrameSource,
    GroundTruthVideo,
    MissingFileError,
    TrackInfo,
    TrackPrediction,
    VideoPrediction,
    VideoRecord,
)

FORMAT = "ytvis"


def _paths(root: Path, split: str, ann_file: str | Path | None, image_root: str | Path | None) -> tuple[Path, Path]:
    root = Path(root)
    ann = Path(ann_file) if ann_file is not None else Path(split) / "instances.json"
    img = Path(image_root) if image_root is not None else Path(split) / "JPEGImages"
    return (ann if ann.is_absolute() else root / ann), (img if img.is_absolute() else root / img)


def _known_id(obj: Any, key: str, where: str, known: Container[int], source: str) -> int:
    """Int field `key` of `obj` whose value must be in `known`; else "<where>: <key> <value> is not in <source>"."""
    value = require_int(obj, key, where)
    if value not in known:
        raise AnnotationFormatError(f"{where}: {key} {value} is not in {source}")
    return value


def _rles(segs: list[Any], video: VideoRecord, where: str) -> list[RLE | None]:
    """Per-frame YouTube-VIS segmentations (RLE/polygon or null) as compressed RLEs of the video's size."""
    frames = [t for t, s in enumerate(segs) if s is not None]
    rles = to_compressed_rles([segs[t] for t in frames], video.height, video.width,
                              lambda k: f"{where} segmentations[{frames[k]}]")
    out: list[RLE | None] = [None] * len(segs)
    for t, rle in zip(frames, rles, strict=True):
        out[t] = rle
    return out


def _read_categories(data: dict, where: str) -> list[Category]:
    cats = require_key(data, "categories", where, (list,))
    out = [
        Category(
            id=require_int(c, "id", f"{where} categories[{i}]"),
            name=str(require_key(c, "name", f"{where} categories[{i}]", (str,))),
        )
        for i, c in enumerate(cats)
    ]
    check_unique((c.id for c in out), where, "category id")
    return out


def _check_frames_exist(paths: list[Path], where: str) -> None:
    """Every frame file exists (one directory listing per folder, not one stat per frame)."""
    listing: dict[Path, set[str]] = {}
    for p in paths:
        if p.parent not in listing:
            listing[p.parent] = set(os.listdir(p.parent)) if p.parent.is_dir() else set()
        if p.name not in listing[p.parent]:
            raise MissingFileError(f"{p}: frame listed in {where} does not exist")


def _read_video(v: Any, i: int, ann_path: Path, image_root: Path, check_frames: bool) -> VideoRecord:
    where = f"{ann_path} videos[{i}]"
    vid = require_int(v, "id", where)
    where = f"{ann_path} video id {vid}"
    height, width, length = (require_int(v, k, where) for k in ("height", "width", "length"))
    file_names = require_key(v, "file_names", where, (list,))
    if len(file_names) != length:
        raise AnnotationFormatError(f"{where}: 'length' is {length} but 'file_names' has {len(file_names)} entries")
    if length == 0 or height <= 0 or width <= 0:
        raise AnnotationFormatError(f"{where}: empty video (length {length}, size {height}x{width})")
    if not all(isinstance(f, str) for f in file_names):
        raise AnnotationFormatError(f"{where}: 'file_names' must be a list of strings")
    paths = [image_root / f for f in file_names]
    if check_frames:
        _check_frames_exist(paths, where)
    frames = FrameSource(kind="images", paths=paths, names=[Path(f).stem for f in file_names])
    name = v.get("name") or Path(file_names[0]).parent.as_posix()
    meta = {"ytvis_id": vid, "name": name, "file_names": list(file_names)}
    return VideoRecord(video_id=str(vid), frames=frames, height=height, width=width, meta=meta)


def _read_annotation(
    a: Any,
    i: int,
    ann_path: Path,
    videos: dict[int, VideoRecord],
    cat_ids: set[int],
) -> tuple[VideoRecord, TrackInfo, list[RLE | None]]:
    where = f"{ann_path} annotations[{i}]"
    aid = require_int(a, "id", where)
    where = f"{ann_path} annotation id {aid}"
    if aid <= 0:
        raise AnnotationFormatError(f"{where}: annotation id must be positive (it is the track id)")
    vid = _known_id(a, "video_id", where, videos, "'videos'")
    video = videos[vid]
    cat = _known_id(a, "category_id", where, cat_ids, "'categories'")
    iscrowd = require_key(a, "iscrowd", where, (int, bool))
    if iscrowd not in (0, 1):
        raise AnnotationFormatError(f"{where}: 'iscrowd' must be 0 or 1, got {iscrowd!r}")
    segs = require_key(a, "segmentations", where, (list,))
    areas = require_key(a, "areas", where, (list,))
    n = video.num_frames
    if len(segs) != n:
        raise AnnotationFormatError(f"{where}: 'segmentations' has {len(segs)} entries, video {vid} has {n} frames")
    if len(areas) != n:
        raise AnnotationFormatError(f"{where}: 'areas' has {len(areas)} entries, video {vid} has {n} frames")
    bboxes = a.get("bboxes")
    if bboxes is not None and (not isinstance(bboxes, list) or len(bboxes) != n):
        raise AnnotationFormatError(f"{where}: 'bboxes' must have one entry per frame ({n})")
    for t, area in enumerate(areas):
        if area is not None and not (is_number(area) and area >= 0):
            raise AnnotationFormatError(f"{where}: areas[{t}] must be a non-negative number or null, got {area!r}")
    for t, box in enumerate(bboxes or ()):
        if box is not None and not (isinstance(box, list) and len(box) == 4 and all(is_number(v) for v in box)):
            raise AnnotationFormatError(f"{where}: bboxes[{t}] must be [x, y, w, h] or null, got {box!r}")
    return video, TrackInfo(track_id=aid, category_id=cat, iscrowd=bool(iscrowd)), _rles(segs, video, where)


def read(
    root: str | Path,
    split: str,
    *,
    ann_file: str | Path | None = None,
    image_root: str | Path | None = None,
    name: str = "ytvis",
    check_frames: bool = True,
) -> DatasetRecord:
    """Read a YouTube-VIS/OVIS split. Track id = annotation id; when the file has annotations, every frame
    of every video is an annotated frame (absent objects are `null`), otherwise no frame is."""
    ann_path, img_root = _paths(Path(root), split, ann_file, image_root)
    data = load_json(ann_path)
    if not isinstance(data, dict):
        raise AnnotationFormatError(f"{ann_path}: top level must be an object, got {type(data).__name__}")
    categories = _read_categories(data, str(ann_path))
    raw_videos = require_key(data, "videos", str(ann_path), (list,))
    if not raw_videos:
        raise AnnotationFormatError(f"{ann_path}: field 'videos' is empty")
    records = [_read_video(v, i, ann_path, img_root, check_frames) for i, v in enumerate(raw_videos)]
    check_unique((r.meta["ytvis_id"] for r in records), str(ann_path), "video id")
    by_id = {r.meta["ytvis_id"]: r for r in records}

    raw_anns = data.get("annotations")
    has_annotations = raw_anns is not None
    if has_annotations and not isinstance(raw_anns, list):
        raise AnnotationFormatError(f"{ann_path}: field 'annotations' must be a list or null")
    per_video: dict[int, dict[int, list[RLE | None]]] = {vid: {} for vid in by_id}
    cat_ids = {c.id for c in categories}
    seen_ids: set[int] = set()
    for i, a in enumerate(raw_anns or []):
        video, info, rles = _read_annotation(a, i, ann_path, by_id, cat_ids)
        if info.track_id in seen_ids:
            raise AnnotationFormatError(f"{ann_path} annotations[{i}]: duplicate annotation id {info.track_id}")
        seen_ids.add(info.track_id)
        video.tracks[info.track_id] = info
        per_video[video.meta["ytvis_id"]][info.track_id] = rles

    if has_annotations:
        for vid, tracks in per_video.items():
            video = by_id[vid]
            for t in range(video.num_frames):
                rles_t = {tid: seq[t] for tid, seq in tracks.items() if seq[t] is not None}
                nonempty = frozenset(tid for tid, r in rles_t.items() if _area(r) > 0)
                video.annotations.append(FrameAnnotation(frame=t, rles=rles_t, track_ids=nonempty))
    meta = {"ann_file": str(ann_path), "image_root": str(img_root), "has_annotations": has_annotations}
    return DatasetRecord(
        name=name,
        format=FORMAT,
        split=split,
        root=Path(root),
        categories=categories,
        videos=records,
        meta=meta,
    )


def _area(rle: RLE) -> int:
    counts = rle["counts"]
    return int(mask_utils.area({"size": rle["size"], "counts": counts.encode() if isinstance(counts, str) else counts}))


def write_ground_truth(
    root: str | Path,
    split: str,
    videos: list[GroundTruthVideo],
    categories: list[Category],
    *,
    ann_file: str | Path | None = None,
    image_root: str | Path | None = None,
    jpeg_quality: int = JPEG_QUALITY,
) -> Path:
    """Write frames (JPEG) and an instances JSON like the released files: uncompressed-RLE `segmentations`,
    `areas` and `bboxes` per frame (`null` where absent). Video ids are 1..V in list order; annotation ids
    run 1.. over videos in order, tracks in ascending track id. Returns the annotation file path."""
    ann_path, img_root = _paths(Path(root), split, ann_file, image_root)
    cat_ids = {c.id for c in categories}
    check_unique((v.video_id for v in videos), "write_ground_truth", "video_id")
    json_videos: list[dict[str, Any]] = []
    json_anns: list[dict[str, Any]] = []
    for vi, video in enumerate(videos, start=1):
        ids = check_gt_video(video, cat_ids)
        file_names = [f"{video.video_id}/{t:05d}.jpg" for t in range(len(video.frames))]
        for fname, frame in zip(file_names, video.frames):
            save_jpeg(img_root / fname, frame, jpeg_quality)
        json_videos.append(
            {
                "id": vi,
                "width": video.width,
                "height": video.height,
                "length": len(file_names),
                "file_names": file_names,
                "name": video.video_id,
            }
        )
        for tid in ids:
            segs, areas, bboxes = [], [], []
            for imap in video.instance_maps:
                mask = imap == tid
                present = bool(mask.any())
                segs.append(uncompressed_rle(mask) if present else None)
                areas.append(int(mask.sum()) if present else None)
                bboxes.append([float(x) for x in mask_utils.toBbox(_to_bytes(encode_rle(mask)))] if present else None)
            json_anns.append(
                {
                    "id": len(json_anns) + 1,
                    "video_id": vi,
                    "category_id": video.track_categories[tid],
                    "iscrowd": 0,
                    "segmentations": segs,
                    "areas": areas,
                    "bboxes": bboxes,
                    "height": video.height,
                    "width": video.width,
                    "length": 1,
                }
            )
    data = {
        "info": {"description": "vidseg ground truth in YouTube-VIS format"},
        "licenses": [],
        "videos": json_videos,
        "categories": [{"id": c.id, "name": c.name, "supercategory": c.name} for c in categories],
        "annotations": json_anns,
    }
    return write_json_atomic(ann_path, data)


def _to_bytes(rle: RLE) -> RLE:
    c = rle["counts"]
    return {"size": rle["size"], "counts": c.encode("ascii") if isinstance(c, str) else c}


def _results_path(out: str | Path) -> Path:
    out = Path(out)
    return out if out.suffix == ".json" else out / "results.json"


def write_results(out: str | Path, predictions: list[VideoPrediction], dataset: DatasetRecord, **options: Any) -> Path:
    """Write the YouTube-VIS results JSON (a list of {video_id, category_id, score, segmentations}) with one
    compressed RLE or `null` per frame. `out` is a .json path or a folder (then `<out>/results.json`)."""
    videos = video_lookup(dataset.videos)
    cat_ids = {c.id for c in dataset.categories}
    entries: list[dict[str, Any]] = []
    for pred in predictions:
        where = f"prediction for video {pred.video_id!r}"
        if pred.video_id not in videos:
            raise ValueError(f"{where}: video is not in dataset {dataset.name!r}/{dataset.split}")
        video = videos[pred.video_id]
        size = (video.height, video.width)
        for trk in pred.tracks:
            w = f"{where} track {trk.track_id}"
            if trk.category_id is None or trk.category_id not in cat_ids:
                raise ValueError(f"{w}: category_id {trk.category_id} is not a category of the dataset")
            if len(trk.masks) != video.num_frames:
                raise ValueError(f"{w}: {len(trk.masks)} masks for {video.num_frames} frames (one per frame needed)")
            segs = [None if m is None else normalise_rle(m, size, f"{w} frame {t}") for t, m in enumerate(trk.masks)]
            entries.append(
                {
                    "video_id": int(video.meta["ytvis_id"]),
                    "category_id": int(trk.category_id),
                    "score": float(trk.score),
                    "segmentations": segs,
                }
            )
    return write_json_atomic(_results_path(out), entries)


def read_results(path: str | Path, dataset: DatasetRecord) -> list[VideoPrediction]:
    """Read a YouTube-VIS results JSON: one VideoPrediction per dataset video (in dataset order), one
    TrackPrediction per result entry (track ids 1.. in file order within the video)."""
    path = _results_path(path)
    data = load_json(path)
    if not isinstance(data, list):
        raise AnnotationFormatError(f"{path}: results must be a JSON list, got {type(data).__name__}")
    by_int = {int(v.meta["ytvis_id"]): v for v in dataset.videos}
    cat_ids = {c.id for c in dataset.categories}
    tracks: dict[str, list[TrackPrediction]] = {v.video_id: [] for v in dataset.videos}
    for i, e in enumerate(data):
        where = f"{path} results[{i}]"
        vid = _known_id(e, "video_id", where, by_int, "the ground truth")
        video = by_int[vid]
        cat = _known_id(e, "category_id", where, cat_ids, "the ground truth categories")
        score = require_key(e, "score", where, (int, float))
        segs = require_key(e, "segmentations", where, (list,))
        if len(segs) != video.num_frames:
            raise AnnotationFormatError(
                f"{where}: 'segmentations' has {len(segs)} entries, video {vid} has {video.num_frames} frames"
            )
        masks = _rles(segs, video, where)
        trk_list = tracks[video.video_id]
        trk_list.append(TrackPrediction(track_id=len(trk_list) + 1, category_id=cat, score=float(score), masks=masks))
    return [
        VideoPrediction(
            video_id=v.video_id,
            height=v.height,
            width=v.width,
            frame_names=list(v.frames.names),
            tracks=tracks[v.video_id],
        )
        for v in dataset.videos
    ]
