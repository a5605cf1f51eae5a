"""YouTube-VOS 2018/2019 semi-supervised VOS (formats.md §3).

Layout: `<split>/JPEGImages/<vid>/<frame>.jpg`, `<split>/Annotations/<vid>/<frame>.png` (indexed, object
ids, 0 = background) and `<split>/meta.json` (`videos -> objects -> {category, frames}`). Objects may first
appear after frame 0; prompts are (object, first-appearance frame).

Two annotation densities are read:
- dense (train): a PNG for every frame that meta.json lists; `track_ids` per frame come from meta.json
  (no PNG decoding) unless `scan_annotations=True`;
- sparse (valid/test): PNGs only at first-appearance frames; these few PNGs are decoded at read time so that
  `track_ids` and prompts are what the files hold (whether earlier objects are redrawn is not assumed).
Categories (names in meta.json) get ids 1..C in alphabetical order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vidseg.data.formats._vos_common import (
    JPEG_QUALITY,
    VOID_VALUE,
    IndexPngDecoder,
    annotation_pngs,
    check_gt_video,
    check_ids,
    check_png_header,
    first_appearance,
    image_size,
    jpeg_frames,
    object_ids,
    png_frame,
    read_index_png,
    read_index_results,
    save_jpeg,
    write_index_result_folders,
)
from vidseg.data.formats.common import (
    check_unique,
    load_json,
    require_key,
    write_index_png,
    write_json_atomic,
)
from vidseg.data.records import (
    AnnotationFormatError,
    Category,
    DatasetRecord,
    FrameAnnotation,
    FrameSource,
    GroundTruthVideo,
    MissingFileError,
    Prompt,
    TrackInfo,
    VideoPrediction,
    VideoRecord,
)

FORMAT = "ytvos"


def _parse_objects(vid: str, entry: Any, meta_path: Path, frame_names: set[str]) -> dict[int, dict[str, Any]]:
    """meta.json objects of one video -> {object id: {"category": str | None, "frames": [names]}}."""
    where = f"{meta_path} video {vid!r}"
    objects = require_key(entry, "objects", where, (dict,))
    out: dict[int, dict[str, Any]] = {}
    for key, obj in objects.items():
        w = f"{where} object {key!r}"
        if not (isinstance(key, str) and key.isdigit() and 0 < int(key) < VOID_VALUE):
            raise AnnotationFormatError(f"{w}: object ids must be integers 1..254 written as strings")
        if int(key) in out:
            raise AnnotationFormatError(f"{w}: duplicate object id {int(key)}")
        frames = require_key(obj, "frames", w, (list,))
        for f in frames:
            if not isinstance(f, str) or f not in frame_names:
                raise AnnotationFormatError(f"{w}: listed frame {f!r} has no JPEG in the video's frame folder")
        category = obj.get("category")
        if category is not None and not isinstance(category, str):
            raise AnnotationFormatError(f"{w}: field 'category' must be str")
        out[int(key)] = {"category": category, "frames": frames}
    return out


def _read_video(
    split_dir: Path,
    vid: str,
    entry: Any,
    meta_path: Path,
    frames_dir: str,
    check_pngs: bool,
    scan_annotations: bool | None,
    cat_ids: dict[str, int],
) -> VideoRecord:
    fdir = split_dir / frames_dir / vid
    frame_files, names = jpeg_frames(fdir, f"video {vid!r}", meta_path)
    index = {n: i for i, n in enumerate(names)}
    objects = _parse_objects(vid, entry, meta_path, set(names))
    height, width = image_size(frame_files[0])

    adir = split_dir / "Annotations" / vid
    pngs = annotation_pngs(adir, f"video {vid!r}", meta_path)
    for png in pngs:
        png_frame(png, index, fdir)
        if check_pngs:
            check_png_header(png, (height, width))
    png_frames = {index[p.stem] for p in pngs}
    listed = {index[f] for o in objects.values() for f in o["frames"]}
    sparse = not listed <= png_frames
    # sparse (valid/test): PNGs exactly at the objects' first listed frames; anything else misses a PNG
    firsts = {min(index[f] for f in o["frames"]) for o in objects.values() if o["frames"]}
    if sparse and png_frames != firsts:
        missing = sorted((firsts - png_frames) or (listed - png_frames))[0]
        raise MissingFileError(f"{adir / names[missing]}.png: annotation PNG of a frame that {meta_path} lists for "
                               f"video {vid!r} does not exist")
    scan = sparse if scan_annotations is None else scan_annotations
    allowed = frozenset(objects)

    annotations: list[FrameAnnotation] = []
    first_seen: dict[int, int] = {}
    for png in pngs:
        frame = index[png.stem]
        if scan:
            ids = object_ids(read_index_png(png, (height, width)))
            check_ids(png, ids, None, allowed)
        else:
            ids = [k for k, o in objects.items() if png.stem in o["frames"]]
        for k in ids:
            first_seen[k] = min(first_seen.get(k, frame), frame)
        annotations.append(FrameAnnotation(frame=frame, label_map=png, track_ids=frozenset(ids)))
    never = sorted(set(objects) - set(first_seen))
    if never:
        raise AnnotationFormatError(
            f"{meta_path} video {vid!r} object {never[0]}: no annotation PNG in {adir} holds it"
        )
    # unscanned PNGs: their objects were taken from meta.json, so decoding checks they are there
    claimed = None if scan else {a.label_map.name: a.track_ids for a in annotations}
    decoder = IndexPngDecoder(height=height, width=width, allowed=allowed, void=False, claimed=claimed,
                              claimed_by=str(meta_path))
    for ann in annotations:
        ann.decoder = decoder
    tracks = {
        k: TrackInfo(track_id=k, category_id=None if o["category"] is None else cat_ids[o["category"]])
        for k, o in sorted(objects.items())
    }
    return VideoRecord(
        video_id=vid,
        frames=FrameSource(kind="images", paths=frame_files, names=names),
        height=height,
        width=width,
        tracks=tracks,
        annotations=annotations,
        prompts=[Prompt(track_id=k, frame=first_seen[k]) for k in sorted(first_seen)],
        meta={"sparse": sparse, "object_categories": {k: o["category"] for k, o in objects.items()}},
    )


def read(
    root: str | Path,
    split: str,
    *,
    frames_dir: str = "JPEGImages",
    meta_file: str = "meta.json",
    check_pngs: bool = True,
    scan_annotations: bool | None = None,
    name: str = "ytvos",
) -> DatasetRecord:
    """Read `<root>/<split>`. `check_pngs` checks every annotation PNG's header (mode, size);
    `scan_annotations` (default: only for sparse videos) decodes them to take `track_ids` from the pixels."""
    split_dir = Path(root) / split
    meta_path = split_dir / meta_file
    meta = load_json(meta_path)
    entries = require_key(meta, "videos", str(meta_path), (dict,))
    names: set[str] = set()
    for vid, entry in entries.items():
        for obj in require_key(entry, "objects", f"{meta_path} video {vid!r}", (dict,)).values():
            cat = obj.get("category") if isinstance(obj, dict) else None
            if isinstance(cat, str):
                names.add(cat)
    cat_ids = {n: i for i, n in enumerate(sorted(names), start=1)}
    videos = [
        _read_video(split_dir, vid, entry, meta_path, frames_dir, check_pngs, scan_annotations, cat_ids)
        for vid, entry in entries.items()
    ]
    categories = [Category(id=i, name=n) for n, i in cat_ids.items()]
    return DatasetRecord(
        name=name,
        format=FORMAT,
        split=split,
        root=Path(root),
        categories=categories,
        videos=videos,
        meta={"meta_file": str(meta_path)},
    )


def write_ground_truth(
    root: str | Path,
    split: str,
    videos: list[GroundTruthVideo],
    categories: list[Category],
    *,
    sparse: bool = False,
    jpeg_quality: int = JPEG_QUALITY,
) -> Path:
    """Write frames named like YouTube-VOS (`00000`, `00005`, … = 30-fps index), index PNGs and meta.json.
    Dense (train): a PNG per frame; `frames` = frames where the object is visible. `sparse` (valid/test):
    PNGs only at first-appearance frames, each holding only the objects appearing there; `frames` = every
    frame from the first appearance on. Returns the meta.json path."""
    split_dir = Path(root) / split
    cat_names = {c.id: c.name for c in categories}
    check_unique((v.video_id for v in videos), "ytvos.write_ground_truth", "video_id")
    meta_videos: dict[str, Any] = {}
    for video in videos:
        ids = check_gt_video(video, set(cat_names))
        if ids and ids[-1] >= VOID_VALUE:
            raise ValueError(f"GroundTruthVideo {video.video_id!r}: YouTube-VOS object ids must be 1..254")
        names = [f"{5 * t:05d}" for t in range(len(video.frames))]
        for name, frame in zip(names, video.frames):
            save_jpeg(split_dir / "JPEGImages" / video.video_id / f"{name}.jpg", frame, jpeg_quality)
        first = first_appearance(video, ids)
        adir = split_dir / "Annotations" / video.video_id
        for t, (name, imap) in enumerate(zip(names, video.instance_maps)):
            if not sparse:
                write_index_png(adir / f"{name}.png", imap.astype(np.uint8))
            elif t in first.values():
                new = [k for k in ids if first[k] == t]
                write_index_png(adir / f"{name}.png", np.where(np.isin(imap, new), imap, 0).astype(np.uint8))
        objects = {}
        for k in ids:
            visible = [n for n, imap in zip(names, video.instance_maps) if (imap == k).any()]
            frames = names[first[k] :] if sparse else visible
            objects[str(k)] = {"category": cat_names[video.track_categories[k]], "frames": frames}
        meta_videos[video.video_id] = {"objects": objects}
    return write_json_atomic(split_dir / "meta.json", {"videos": meta_videos})


def _results_dir(out: Path) -> Path:
    return out if out.name == "Annotations" else out / "Annotations"


def write_results(out: str | Path, predictions: list[VideoPrediction], dataset: DatasetRecord, **options: Any) -> Path:
    """Write the submission folder `<out>/Annotations/<vid>/<frame>.png` (palette, object ids of the video)
    for every frame of every predicted video. Returns the `Annotations` folder (zip it to submit)."""
    folder = _results_dir(Path(out))
    write_index_result_folders(folder, predictions, dataset, "video", lambda video: set(video.tracks))
    return folder


def read_results(path: str | Path, dataset: DatasetRecord) -> list[VideoPrediction]:
    """Read `<path>/Annotations/<vid>/<frame>.png` (or `<path>/<vid>/…` when `path` is the Annotations
    folder) for every video and frame; one TrackPrediction per object id present (score 1, no class)."""
    folder = _results_dir(Path(path))
    return [read_index_results(folder / v.video_id, v, set(v.tracks)) for v in dataset.videos]
