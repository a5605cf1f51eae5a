"""Cityscapes-VPS (mcahny/vps): VPS ground truth (RGB-id PNGs + COCO-panoptic JSON) and VPQ results.

Layout: ``<root>/<split>/img/<image_id>_leftImg8bit.png`` (annotated frames), ``<root>/<split>/panoptic_video/
<file_name>`` and ``<root>/panoptic_gt_<split>_city_vps.json``; for ``all_frames=True``
``<root>/im_all_info_<split>_city_vps.json`` + ``<root>/<split>/img_all/`` as the official
``fetch_city_images.py`` writes them (raw Cityscapes names, see `_cityscapes_vps_frames`). A video is the
first 4 characters of the image id. The test split has no GT: it is read from
``panoptic_im_test_city_vps.json`` (its annotated frames, no annotations) so results can be written for it.
A split whose panoptic GT JSON has not been made by the official preparation scripts is read from the released
``<split>/cls/`` + ``<split>/inst/`` PNGs by the same rules (`_cityscapes_vps_release`; ``labels="cls_inst"``).

Track ids: the panoptic segment id of every non-crowd thing segment (the official GT keeps a raw instance's
id over its whole video). Crowd segments are not tracks: their pixels are thing-class pixels of `semantic`
that no track mask covers. Results: ``<out>/pan_pred/<image_id>.png`` + ``<out>/pred.json`` in GT
annotation order (the official script pairs predictions with the GT by position).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from vidseg.data.formats._cityscapes_vps_frames import (
    AllFrames,
    images_json_path,
    parse_images,
)
from vidseg.data.formats._cityscapes_vps_parse import (
    Segment,
    decode_frame,
    parse_categories,  # also used by the VIPSeg readers
    parse_segments,
)
from vidseg.data.formats._cityscapes_vps_release import (
    ColourTable,
    ReleaseFrame,
    read_release,
    release_decoder,
    write_release_frame,
)
from vidseg.data.formats._cityscapes_vps_results import read_results, write_results  # noqa: F401 (the format API)
from vidseg.data.formats.common import (
    check_unique,
    load_json,
    require_dir,
    require_file,
    require_key,
    write_json_atomic,
)
from vidseg.data.formats.vps_common import (
    MAX_SEGMENT_ID,
    check_ground_truth,
    cityscapes_categories,
    write_frame,
    write_id_png,
)
from vidseg.data.records import (
    IGNORE_LABEL,
    AnnotationFormatError,
    Category,
    DatasetRecord,
    FrameAnnotation,
    FrameSource,
    GroundTruthVideo,
    MissingFileError,
    TrackInfo,
    VideoRecord,
)

FORMAT = "cityscapes_vps"
THING_IDS = tuple(range(11, 19))
IMAGE_SUFFIX = "_leftImg8bit.png"
PNG_SUFFIX = "_gtFine_color.png"
NO_GT_SPLITS = ("test",)  # official splits whose panoptic GT is not released
LABEL_SOURCES = ("auto", "panoptic_video", "cls_inst")


def default_categories() -> list[Category]:
    """The 19 Cityscapes train ids; ids 11..18 (person .. bicycle) are things."""
    return cityscapes_categories(THING_IDS)


def gt_json_path(root: Path, split: str) -> Path:
    return Path(root) / f"panoptic_gt_{split}_city_vps.json"


class _Entry(NamedTuple):
    """One annotated frame: image id, image file name, size, and its GT (None without): the panoptic PNG +
    segments, or the released cls PNG + inst PNG + the track ids found in them + the category colours."""

    image_id: str
    file_name: str
    height: int
    width: int
    png: Path | None = None
    segments: tuple[Segment, ...] | None = None
    release: tuple[ReleaseFrame, ColourTable] | None = None


def _label_source(root: Path, split: str, labels: str) -> str:
    """Where a split's GT is read from: "panoptic_video", "cls_inst" or "none" (a split without released GT)."""
    if labels not in LABEL_SOURCES:
        raise ValueError(f"cityscapes_vps.read: option labels={labels!r}; expected one of {LABEL_SOURCES}")
    if labels != "auto":
        return labels
    if gt_json_path(root, split).is_file():
        return "panoptic_video"
    if (root / split / "cls").is_dir() and (root / split / "inst").is_dir():
        return "cls_inst"
    if split in NO_GT_SPLITS:
        return "none"
    raise MissingFileError(f"{gt_json_path(root, split)}: required GT JSON does not exist "
                           f"(nor the released {root / split}/cls and {root / split}/inst folders)")  # fmt: skip


def read(
    root: Path, split: str, *, all_frames: bool = False, labels: str = "auto", **options: Any
) -> DatasetRecord:  # fmt: skip
    """Read a Cityscapes-VPS split from its panoptic GT JSON. Frames = the annotated frames of `img/`
    (all frames listed in ``im_all_info_<split>_city_vps.json``, from `img_all/`, with `all_frames=True`).
    PNGs are checked against segments_info on decode. The test split (no GT released) is read from
    ``panoptic_im_test_city_vps.json``: videos with frames and no annotations, for `write_results`.
    `labels`: "auto" takes the panoptic GT JSON when it exists, else the released ``cls/`` + ``inst/`` PNGs
    (decoded once here for the track list); "panoptic_video" or "cls_inst" insists on one."""
    if options:
        raise TypeError(f"cityscapes_vps.read: unknown options {sorted(options)}")
    root = Path(root)
    json_path = gt_json_path(root, split)
    source = _label_source(root, split, labels)
    if source == "none":
        im_path = images_json_path(root, split)
        if not im_path.is_file():
            raise MissingFileError(f"{json_path}: required GT JSON does not exist (nor {im_path}, the frame list)")
        return _read_without_gt(root, split, im_path, all_frames)
    if source == "cls_inst":
        im_path, cats, table, frames = read_release(root, split)
        entries = [_Entry(f.image_id, f.file_name, f.height, f.width, f.cls, release=(f, table)) for f in frames]
        return _dataset(root, split, im_path, entries, cats, [e.image_id for e in entries], all_frames)
    data = load_json(json_path)
    where = str(json_path)
    cats = parse_categories(require_key(data, "categories", where, list), where)
    cat_ids = {c.id for c in cats}
    pan_dir = require_dir(root / split / "panoptic_video", "Cityscapes-VPS panoptic_video folder")
    images = parse_images(require_key(data, "images", where, list), where)
    entries: list[_Entry] = []
    for i, ann in enumerate(require_key(data, "annotations", where, list)):
        w = f"{where}: annotations[{i}]"
        iid = require_key(ann, "image_id", w, str)
        if iid not in images:
            raise AnnotationFormatError(f"{w}: image_id {iid!r} is not in 'images'")
        png = require_file(pan_dir / require_key(ann, "file_name", w, str), f"panoptic PNG of {iid}")
        segments = parse_segments(require_key(ann, "segments_info", w, list), cat_ids, w)
        entries.append(_Entry(iid, *images[iid], png, segments))
    order = [e.image_id for e in entries]
    check_unique(order, where, "annotation image_id")
    return _dataset(root, split, json_path, entries, cats, order, all_frames)


def _read_without_gt(root: Path, split: str, im_path: Path, all_frames: bool) -> DatasetRecord:
    """A split without GT: the annotated frames of ``panoptic_im_<split>_city_vps.json`` (categories from it
    when listed, else the 19 defaults), no annotations; results follow the sorted file-name order."""
    data = load_json(im_path)
    where = str(im_path)
    raw_cats = data.get("categories") if isinstance(data, dict) else None
    cats = parse_categories(raw_cats, where) if raw_cats else default_categories()
    images = parse_images(require_key(data, "images", where, list), where)
    entries = sorted((_Entry(iid, *im) for iid, im in images.items()), key=lambda e: e.file_name)
    if not entries:
        raise AnnotationFormatError(f"{where}: 'images' is empty")
    return _dataset(root, split, im_path, entries, cats, [e.image_id for e in entries], all_frames)


def _dataset(
    root: Path, split: str, json_path: Path, entries: list[_Entry], cats: list[Category], order: list[str],
    all_frames: bool,
) -> DatasetRecord:  # fmt: skip
    things = tuple(c.id for c in cats if c.isthing)
    per_video: dict[str, list[_Entry]] = {}
    for e in entries:
        per_video.setdefault(e.image_id[:4], []).append(e)
    every = AllFrames.load(root, split) if all_frames else None
    img_dir = None if all_frames else require_dir(root / split / "img", "Cityscapes-VPS img folder")
    videos = []
    for vid, group in per_video.items():
        group.sort(key=lambda e: e.file_name)
        if every is not None:
            paths, positions = every.frames_of(vid, [e.file_name for e in group])
        else:
            paths = [require_file(img_dir / e.file_name, f"frame {e.image_id}") for e in group]
            positions = list(range(len(group)))
        videos.append(_video_record(json_path, vid, group, paths, positions, things))
    return DatasetRecord(
        name=FORMAT, format=FORMAT, split=split, root=root, categories=cats, videos=videos,
        meta={"annotation_order": order, "thing_ids": list(things),
              "ground_truth": any(e.png is not None for e in entries)},
    )  # fmt: skip


def _video_record(
    json_path: Path, vid: str, entries: list[_Entry], paths: list[Path], positions: list[int],
    things: tuple[int, ...],
) -> VideoRecord:  # fmt: skip
    sizes = {(e.height, e.width) for e in entries}
    if len(sizes) != 1:
        raise AnnotationFormatError(f"{json_path}: video {vid} has frames of sizes {sorted(sizes)}")
    height, width = sizes.pop()
    tracks: dict[int, TrackInfo] = {}
    annotations = []
    for e, frame in zip(entries, positions):
        if e.release is not None:
            found = [(t, t // 1000) for t in e.release[0].track_ids]  # release track id = class * 1000 + k
            decoder = release_decoder(*e.release)
        elif e.png is not None and e.segments is not None:
            found = [(sid, cid) for sid, cid, crowd, _ in e.segments if cid in things and not crowd]
            decoder = partial(decode_frame, size=(height, width), segments=e.segments, thing_ids=things)
        else:
            continue
        for sid, cid in found:
            known = tracks.setdefault(sid, TrackInfo(track_id=sid, category_id=cid))
            if known.category_id != cid:
                raise AnnotationFormatError(
                    f"{json_path}: {e.image_id}: segment {sid} has category {cid}, "
                    f"category {known.category_id} in an earlier frame of video {vid}"
                )
        tids = [sid for sid, _ in found]
        annotations.append(FrameAnnotation(frame=frame, label_map=e.png, decoder=decoder, track_ids=frozenset(tids)))
    return VideoRecord(
        video_id=vid,
        frames=FrameSource(kind="images", paths=paths, names=[p.stem for p in paths]),
        height=height,
        width=width,
        tracks=dict(sorted(tracks.items())),
        annotations=sorted(annotations, key=lambda a: a.frame),
        meta={"image_ids": {frame: e.image_id for e, frame in zip(entries, positions)}},
    )


def _video_names(videos: list[GroundTruthVideo]) -> list[str]:
    ids = [v.video_id for v in videos]
    if all(len(i) == 4 and i.isdigit() for i in ids) and len(set(ids)) == len(ids):
        return ids
    return [f"{i + 1:04d}" for i in range(len(videos))]


def write_ground_truth(
    root: Path,
    split: str,
    videos: list[GroundTruthVideo],
    categories: list[Category],
    *,
    city: str = "synthetic",
    frames_per_video: int | None = 6,
    release_labels: bool = False,
    **options: Any,
) -> dict[str, str]:
    """Write GT in the Cityscapes-VPS layout (frames PNG, RGB-id PNGs, panoptic GT JSON). Video ids that
    are not all 4-digit strings are renumbered 0001, 0002, ... in list order (returned as a mapping).
    Frame k is named frame number 5k. Thing tracks keep their track id as segment id; stuff of category c
    gets id base + c and the crowd of thing class c gets base + K + c (base = 1 + largest track id,
    K = 1 + largest category id). `frames_per_video` (6 like the official data; None = any) is enforced.
    `release_labels` also writes the GT as released (``<split>/cls/``, ``<split>/inst/``, and the frame list
    ``panoptic_im_<split>_city_vps.json``; needs category colours); crowd pixels are void there."""
    if options:
        raise TypeError(f"cityscapes_vps.write_ground_truth: unknown options {sorted(options)}")
    root = Path(root)
    where = f"{root} ({FORMAT} GT writer)"
    cats = list(categories)
    check_unique((c.id for c in cats), where, "category id")
    things = {c.id for c in cats if c.isthing}
    names = _video_names(videos)
    images, annotations = [], []
    for vid, video in zip(names, videos):
        check_ground_truth(video, cats, where)
        if frames_per_video is not None and len(video.frames) != frames_per_video:
            raise AnnotationFormatError(
                f"{where}: video {video.video_id!r} has {len(video.frames)} frames, "
                f"Cityscapes-VPS needs {frames_per_video} annotated frames per video"
            )
        base = max(video.track_categories, default=0) + 1
        k = max(max(c.id for c in cats), IGNORE_LABEL) + 1
        lut = np.zeros(k, dtype=np.int64)
        for c in cats:
            lut[c.id] = base + k + c.id if c.isthing else base + c.id
        if base + 2 * k > MAX_SEGMENT_ID:
            raise AnnotationFormatError(f"{where}: video {video.video_id!r}: segment ids exceed {MAX_SEGMENT_ID}")
        for t, frame in enumerate(video.frames):
            image_id = f"{vid}_{5 * t:04d}_{city}_{int(vid):06d}_{5 * t:06d}"
            inst, sem = video.instance_maps[t], video.semantic_maps[t]
            ids = np.where(inst > 0, inst, lut[sem])
            write_frame(root / split / "img" / f"{image_id}{IMAGE_SUFFIX}", frame)
            write_id_png(root / split / "panoptic_video" / f"{image_id}{PNG_SUFFIX}", ids)
            if release_labels:
                write_release_frame(root, split, image_id, sem, inst, cats)
            segments = []
            uniq, first, counts = np.unique(ids, return_index=True, return_counts=True)
            for sid, pos, area in zip(uniq.tolist(), first.tolist(), counts.tolist()):
                if sid == 0:
                    continue
                cid = int(sem.flat[pos])
                crowd = int(cid in things and sid >= base)
                segments.append({"id": sid, "category_id": cid, "iscrowd": crowd, "area": area})
            segments.sort(key=lambda s: (s["category_id"] in things, s["id"]))
            images.append({"id": image_id, "width": video.width, "height": video.height,
                           "file_name": f"{image_id}{IMAGE_SUFFIX}"})  # fmt: skip
            annotations.append({"image_id": image_id, "file_name": f"{image_id}{PNG_SUFFIX}",
                                "segments_info": segments})  # fmt: skip
    images.sort(key=lambda im: im["file_name"])
    annotations.sort(key=lambda a: a["file_name"])
    categories_json = [
        {"id": c.id, "name": c.name, "isthing": int(c.isthing), "trainid": c.id,
         **({"color": list(c.color)} if c.color is not None else {})}
        for c in cats
    ]  # fmt: skip
    write_json_atomic(gt_json_path(root, split), {"images": images, "annotations": annotations,
                                                  "categories": categories_json})  # fmt: skip
    if release_labels:
        write_json_atomic(images_json_path(root, split), {"images": images, "categories": categories_json})
    return {v.video_id: n for v, n in zip(videos, names)}
