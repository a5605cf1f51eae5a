"""BURST (point-exemplar-guided tracking, formats.md §8): reader, GT writer, results writer/reader.

Annotations: `<root>/<split>/all_classes.json` (+ `first_frame_annotations.json` for the exemplars).
Frames: `<image_root>/<split>/<dataset>/<seq_name>/<image path>` (`image_root` defaults to `root`).
The record's frames are `all_image_paths`; annotated frames are the positions of `annotated_image_paths`;
masks are compressed RLE counts strings of size [height, width]; track ids are strings in JSON -> ints.
The writers and the results reader are implemented in `_burst_write.py` (size limit per module).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pycocotools import mask as mask_utils

from vidseg.data.formats.common import (
    check_unique,
    is_number,
    load_json,
    require_int,
    require_key,
    to_compressed_rle,
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
    Point,
    Prompt,
    TrackInfo,
    VideoPrediction,
    VideoRecord,
)

FORMAT = "burst"


def _track_id(key: Any, where: str) -> int:
    if not (isinstance(key, str) and key.isdigit() and int(key) > 0):
        raise AnnotationFormatError(f"{where}: track id {key!r} must be a positive integer string")
    return int(key)


def _rle(value: Any, height: int, width: int, where: str) -> RLE:
    """A BURST mask entry's `rle` (counts string, or an RLE dict whose size must be [height, width])."""
    rle = require_key(value, "rle", where)
    if isinstance(rle, str):
        rle = {"size": [height, width], "counts": rle}
    elif not isinstance(rle, dict):
        raise AnnotationFormatError(f"{where}: field 'rle' must be a counts string or an RLE object")
    return to_compressed_rle(rle, height, width, where)


def _image_paths(obj: Any, key: str, where: str) -> list[str]:
    """`obj[key]` as a list of image path strings; anything else is an AnnotationFormatError naming the field."""
    value = require_key(obj, key, where, (list,))
    for k, item in enumerate(value):
        if not isinstance(item, str):
            raise AnnotationFormatError(
                f"{where}: '{key}'[{k}] must be an image path string, got {type(item).__name__}"
            )
    return value


def _category_ids(seq: dict, key: str, where: str) -> list[int]:
    """Optional list of category ids (`neg_category_ids`, `not_exhaustive_category_ids`); absent -> []."""
    if key not in seq:
        return []
    value = seq[key]
    if not isinstance(value, list):
        raise AnnotationFormatError(
            f"{where}: field '{key}' must be a list of category ids, got {type(value).__name__}"
        )
    for k, c in enumerate(value):
        if not isinstance(c, int) or isinstance(c, bool):
            raise AnnotationFormatError(f"{where}: '{key}'[{k}] must be an int category id, got {c!r}")
    return list(value)


def _area(rle: RLE) -> int:
    return int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")}))


def parse_sequences(data: Any, path: Path) -> list[dict[str, Any]]:
    """Top-level checks: an object with a `sequences` list."""
    if not isinstance(data, dict):
        raise AnnotationFormatError(f"{path}: top level must be an object, got {type(data).__name__}")
    seqs = require_key(data, "sequences", str(path), (list,))
    check_unique((require_int(s, "id", f"{path} sequences[{i}]") for i, s in enumerate(seqs)), str(path), "sequence id")
    return seqs


def _read_categories(data: dict, path: Path) -> list[Category]:
    cats = require_key(data, "categories", str(path), (list,))
    out = [
        Category(
            id=require_int(c, "id", f"{path} categories[{i}]"),
            name=str(require_key(c, "name", f"{path} categories[{i}]", (str,))),
        )
        for i, c in enumerate(cats)
    ]
    check_unique((c.id for c in out), str(path), "category id")
    return out


def _frames(seq: dict, where: str, seq_dir: Path, check_frames: bool) -> tuple[FrameSource, dict[str, int]]:
    all_paths = require_key(seq, "all_image_paths", where, (list,))
    if not all_paths or not all(isinstance(p, str) for p in all_paths):
        raise AnnotationFormatError(f"{where}: 'all_image_paths' must be a non-empty list of strings")
    check_unique(all_paths, where, "image path in 'all_image_paths'")
    paths = [seq_dir / p for p in all_paths]
    if check_frames:
        present = set(os.listdir(seq_dir)) if seq_dir.is_dir() else None
        if present is None:
            raise MissingFileError(f"{seq_dir}: frame folder of {where} does not exist")
        for rel, p in zip(all_paths, paths):
            if (rel not in present) if "/" not in rel else not p.is_file():
                raise MissingFileError(f"{p}: frame listed in {where} 'all_image_paths' does not exist")
    names = [Path(p).stem for p in all_paths]
    return FrameSource(kind="images", paths=paths, names=names), {p: i for i, p in enumerate(all_paths)}


def _read_sequence(
    seq: Any, i: int, path: Path, image_root: Path, split: str, cat_ids: set[int], check_frames: bool
) -> VideoRecord:
    where = f"{path} sequences[{i}]"
    sid = require_int(seq, "id", where)
    dataset = require_key(seq, "dataset", where, (str,))
    seq_name = require_key(seq, "seq_name", where, (str,))
    where = f"{path} sequence {sid} ({dataset}/{seq_name})"
    height, width = require_int(seq, "height", where), require_int(seq, "width", where)
    frames, index = _frames(seq, where, image_root / split / dataset / seq_name, check_frames)
    annotated = _image_paths(seq, "annotated_image_paths", where)
    if not annotated:
        raise AnnotationFormatError(f"{where}: 'annotated_image_paths' is empty (a sequence needs annotated frames)")
    for p in annotated:
        if p not in index:
            raise AnnotationFormatError(f"{where}: annotated image {p!r} is not in 'all_image_paths'")
    check_unique(annotated, where, "image path in 'annotated_image_paths'")
    segs = require_key(seq, "segmentations", where, (list,))
    if len(segs) != len(annotated):
        raise AnnotationFormatError(
            f"{where}: 'segmentations' has {len(segs)} entries, 'annotated_image_paths' {len(annotated)}"
        )
    tcats = require_key(seq, "track_category_ids", where, (dict,))
    tracks: dict[int, TrackInfo] = {}
    for key, cat in tcats.items():
        tid = _track_id(key, f"{where} track_category_ids")
        if not isinstance(cat, int) or isinstance(cat, bool) or cat not in cat_ids:
            raise AnnotationFormatError(f"{where}: track {tid} has category id {cat!r}, not in 'categories'")
        tracks[tid] = TrackInfo(track_id=tid, category_id=cat)
    annotations, auto_masks = [], []
    for j, (img, seg) in enumerate(zip(annotated, segs)):
        w = f"{where} segmentations[{j}] ({img})"
        if not isinstance(seg, dict):
            raise AnnotationFormatError(f"{w}: must be an object mapping track ids to masks")
        frame = index[img]
        rles: dict[int, RLE | None] = {}
        for key, value in seg.items():
            tid = _track_id(key, w)
            if tid not in tracks:
                raise AnnotationFormatError(f"{w}: track id {tid} is not in 'track_category_ids'")
            rles[tid] = _rle(value, height, width, f"{w} track {tid}")
            if value.get("is_gt") is False:
                auto_masks.append((frame, tid))
        nonempty = frozenset(t for t, r in rles.items() if r is not None and _area(r) > 0)
        annotations.append(FrameAnnotation(frame=frame, rles=rles, track_ids=nonempty))
    annotations.sort(key=lambda a: a.frame)
    fps = seq.get("fps")
    if fps is not None and not (is_number(fps) and fps > 0):
        raise AnnotationFormatError(f"{where}: field 'fps' must be a positive number or absent, got {fps!r}")
    meta = {
        "burst_id": sid,
        "dataset": dataset,
        "seq_name": seq_name,
        "all_image_paths": list(seq["all_image_paths"]),
        "annotated_image_paths": list(annotated),
        "neg_category_ids": _category_ids(seq, "neg_category_ids", where),
        "not_exhaustive_category_ids": _category_ids(seq, "not_exhaustive_category_ids", where),
        "auto_masks": auto_masks,
    }
    return VideoRecord(
        video_id=str(sid),
        frames=frames,
        height=height,
        width=width,
        fps=None if fps is None else float(fps),
        tracks=tracks,
        annotations=annotations,
        meta=meta,
    )


def _first_appearance_prompts(video: VideoRecord) -> list[Prompt]:
    first: dict[int, int] = {}
    for ann in video.annotations:
        for tid in ann.track_ids:
            first.setdefault(tid, ann.frame)
    return [Prompt(track_id=t, frame=f) for t, f in sorted(first.items())]


def _point(value: Any, height: int, width: int, where: str) -> Point:
    """A first-frame `point` ({"x", "y"} or [x, y]) in pixel coordinates: 0 <= x < width, 0 <= y < height."""
    if isinstance(value, dict) and "x" in value and "y" in value:
        x, y = value["x"], value["y"]
    elif isinstance(value, list) and len(value) == 2:
        x, y = value
    else:
        raise AnnotationFormatError(f"{where}: 'point' must be {{'x': .., 'y': ..}} or [x, y]")
    if not all(is_number(v) for v in (x, y)):
        raise AnnotationFormatError(f"{where}: 'point' coordinates must be numbers")
    if not (0 <= x < width and 0 <= y < height):
        raise AnnotationFormatError(
            f"{where}: 'point' (x={x}, y={y}) is outside the {width}x{height} image "
            f"(need 0 <= x < {width}, 0 <= y < {height})"
        )
    return Point(float(x), float(y))


def _bbox(value: Any, where: str) -> tuple[float, float, float, float]:
    """A first-frame `bbox` [x, y, w, h] of finite numbers."""
    bbox = require_key(value, "bbox", where, (list,))
    if len(bbox) != 4:
        raise AnnotationFormatError(f"{where}: 'bbox' must be [x, y, w, h], got {len(bbox)} values")
    for k, b in enumerate(bbox):
        if not is_number(b):
            raise AnnotationFormatError(f"{where}: 'bbox'[{k}] must be a finite number, got {b!r}")
    x, y, w, h = (float(b) for b in bbox)
    return x, y, w, h


def sequence_entry(
    seq: dict[str, Any], i: int, path: Path, videos: dict[int, VideoRecord], unknown: str
) -> tuple[str, VideoRecord, dict[str, int], list[tuple[Any, Any]]]:
    """(where, video, frame index by image path, (annotated image path, segmentation) pairs) of the i-th
    sequence entry of a BURST JSON; an id not in `videos` is an AnnotationFormatError "<where>: <unknown>"."""
    sid = require_int(seq, "id", f"{path} sequences[{i}]")
    where = f"{path} sequence {sid}"
    if sid not in videos:
        raise AnnotationFormatError(f"{where}: {unknown}")
    video = videos[sid]
    index = {p: k for k, p in enumerate(video.meta["all_image_paths"])}
    annotated = _image_paths(seq, "annotated_image_paths", where)
    segs = require_key(seq, "segmentations", where, (list,))
    if len(segs) != len(annotated):
        raise AnnotationFormatError(f"{where}: 'segmentations' and 'annotated_image_paths' differ in length")
    return where, video, index, list(zip(annotated, segs))


def _read_first_frame(path: Path, videos: dict[int, VideoRecord], ann_path: Path) -> None:
    """Set each video's prompts from first_frame_annotations.json (one entry per track); every sequence of
    the annotation file `ann_path` must have an entry."""
    data = load_json(path)
    seqs = parse_sequences(data, path)
    seen: set[int] = set()
    for i, seq in enumerate(seqs):
        where, video, index, pairs = sequence_entry(seq, i, path, videos, f"not a sequence of {ann_path.name}")
        seen.add(video.meta["burst_id"])
        where = f"{where} ({video.meta['dataset']}/{video.meta['seq_name']})"
        prompts: dict[int, Prompt] = {}
        for img, seg in pairs:
            if img not in index:
                raise AnnotationFormatError(f"{where}: annotated image {img!r} is not in the sequence's frames")
            frame = index[img]
            if not isinstance(seg, dict):
                raise AnnotationFormatError(f"{where} ({img}): segmentation entry must be an object")
            for key, value in seg.items():
                w = f"{where} ({img}) track {key}"
                tid = _track_id(key, w)
                if tid not in video.tracks:
                    raise AnnotationFormatError(f"{w}: track id {tid} is not a track of the sequence")
                if tid in prompts:
                    raise AnnotationFormatError(f"{w}: track {tid} appears more than once")
                ann = video.annotation_at(frame)
                if ann is None or tid not in ann.track_ids:
                    raise AnnotationFormatError(f"{w}: all_classes.json has no mask of track {tid} at {img!r}")
                bbox = _bbox(value, w)
                point = _point(require_key(value, "point", w), video.height, video.width, w)
                prompts[tid] = Prompt(track_id=tid, frame=frame, point=point, bbox=bbox)
        missing = sorted(set(t for a in video.annotations for t in a.track_ids) - set(prompts))
        if missing:
            raise AnnotationFormatError(f"{where}: track {missing[0]} has no first-frame annotation")
        video.prompts = [prompts[t] for t in sorted(prompts)]
    for sid, video in videos.items():
        if sid not in seen:
            raise AnnotationFormatError(
                f"{path}: no entry for sequence {sid} ({video.meta['dataset']}/{video.meta['seq_name']}) "
                f"of {ann_path}; every sequence needs its first-frame annotations"
            )


def read(
    root: str | Path,
    split: str,
    *,
    image_root: str | Path | None = None,
    ann_file: str | Path | None = None,
    first_frame_file: str | Path | bool | None = None,
    name: str = "burst",
    check_frames: bool = True,
) -> DatasetRecord:
    """Read a BURST split. Prompts (point + bbox) come from first_frame_annotations.json when it exists (or
    the given path; `False` skips it); otherwise each track is prompted at its first annotated appearance
    without a point (train). Category ids are LVIS ids from the file's `categories`."""
    root = Path(root)
    ann_path = Path(ann_file) if ann_file is not None else root / split / "all_classes.json"
    img_root = Path(image_root) if image_root is not None else root
    data = load_json(ann_path)
    seqs = parse_sequences(data, ann_path)
    categories = _read_categories(data, ann_path)
    cat_ids = {c.id for c in categories}
    videos = [_read_sequence(s, i, ann_path, img_root, split, cat_ids, check_frames) for i, s in enumerate(seqs)]
    ff_path = root / split / "first_frame_annotations.json" if first_frame_file in (None, True) else first_frame_file
    use_ff = first_frame_file is not False and (first_frame_file is not None or Path(ff_path).is_file())
    if use_ff:
        _read_first_frame(Path(ff_path), {v.meta["burst_id"]: v for v in videos}, ann_path)
    else:
        for v in videos:
            v.prompts = _first_appearance_prompts(v)
    meta = {
        "ann_file": str(ann_path),
        "image_root": str(img_root),
        "split_in_file": data.get("split"),
        "first_frame_file": str(ff_path) if use_ff else None,
    }
    return DatasetRecord(
        name=name, format=FORMAT, split=split, root=root, categories=categories, videos=videos, meta=meta
    )


def write_ground_truth(
    root: str | Path, split: str, videos: list[GroundTruthVideo], categories: list[Category], **options: Any
) -> Path:
    """Write frames and all_classes.json / first_frame_annotations.json / common_classes.json /
    uncommon_classes.json (options: see `_burst_write.write_ground_truth`). Returns all_classes.json."""
    from vidseg.data.formats import _burst_write

    return _burst_write.write_ground_truth(root, split, videos, categories, **options)


def write_results(out: str | Path, predictions: list[VideoPrediction], dataset: DatasetRecord, **options: Any) -> Path:
    """Write the BURST results JSON (see `_burst_write.write_results`)."""
    from vidseg.data.formats import _burst_write

    return _burst_write.write_results(out, predictions, dataset, **options)


def read_results(path: str | Path, dataset: DatasetRecord) -> list[VideoPrediction]:
    """Read a BURST results JSON back (see `_burst_write.read_results`)."""
    from vidseg.data.formats import _burst_write

    return _burst_write.read_results(path, dataset)
