"""Cityscapes-VPS (mcahny/vps): VPS ground truth (RGB-id PNGs + COCO-panoptic JSON) and VPQ results.

Layout: ``<root>/<split>/img/<image_id>_leftImg8bit.png`` (annotated frames), optional
``<root>/<split>/img_all/`` (all 30 frames), ``<root>/<split>/panoptic_video/<file_name>`` and
``<root>/panoptic_gt_<split>_city_vps.json``. A video is the first 4 characters of the image id.

Track ids: the panoptic segment id of every non-crowd thing segment (the official GT keeps a raw instance's
id over its whole video). Crowd segments are not tracks: their pixels are thing-class pixels of `semantic`
that no track mask covers. Results: ``<out>/pan_pred/<image_id>.png`` + ``<out>/pred.json`` in GT
annotation order (the official script pairs predictions with the GT by position).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

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
    SegmentIds,
    category_from_json,
    check_ground_truth,
    check_listed_ids,
    check_panoptic_values,
    cityscapes_categories,
    labels_from_ids,
    prediction_frames,
    prediction_panoptic_maps,
    read_id_png,
    write_frame,
    write_id_png,
)
from vidseg.data.records import (
    IGNORE_LABEL,
    AnnotationFormatError,
    Category,
    DatasetRecord,
    FrameAnnotation,
    FrameLabels,
    FrameSource,
    GroundTruthVideo,
    TrackInfo,
    VideoPrediction,
    VideoRecord,
)

FORMAT = "cityscapes_vps"
THING_IDS = tuple(range(11, 19))
IMAGE_SUFFIX = "_leftImg8bit.png"
PNG_SUFFIX = "_gtFine_color.png"


def default_categories() -> list[Category]:
    """The 19 Cityscapes train ids; ids 11..18 (person .. bicycle) are things."""
    return cityscapes_categories(THING_IDS)


def gt_json_path(root: Path, split: str) -> Path:
    return Path(root) / f"panoptic_gt_{split}_city_vps.json"


def image_id_of(file_name: str) -> str:
    """Image id = file name without its last two '_' parts (``..._leftImg8bit.png``)."""
    return file_name.rsplit("_", 2)[0] if file_name.count("_") >= 2 else Path(file_name).stem


def _rgb_color(color: Any) -> tuple[int, ...] | None:
    """A category's color as an int triple when it is a list of three values, else None."""
    return tuple(int(v) for v in color) if isinstance(color, list) and len(color) == 3 else None


def parse_categories(raw: Any, where: str) -> list[Category]:
    if not isinstance(raw, list) or not raw:
        raise AnnotationFormatError(f"{where}: 'categories' must be a non-empty list")
    cats = []
    for i, c in enumerate(raw):
        cats.append(category_from_json(c, f"{where}: categories[{i}]", _rgb_color))
    check_unique((c.id for c in cats), where, "category id")
    return cats


def parse_segments(raw: Any, cat_ids: set[int], where: str) -> tuple[tuple[int, int, int, int | None], ...]:
    """segments_info -> ((id, category_id, iscrowd, area or None), ...), validated."""
    if not isinstance(raw, list):
        raise AnnotationFormatError(f"{where}: 'segments_info' must be a list")
    out = []
    for j, s in enumerate(raw):
        w = f"{where} segments_info[{j}]"
        sid = require_key(s, "id", w, int)
        cid = require_key(s, "category_id", w, int)
        if not 0 < sid <= MAX_SEGMENT_ID:
            raise AnnotationFormatError(f"{w}: segment id {sid} outside 1..{MAX_SEGMENT_ID}")
        if cid not in cat_ids:
            raise AnnotationFormatError(f"{w}: unknown category_id {cid}")
        area = s.get("area")
        if area is not None and not isinstance(area, int):
            raise AnnotationFormatError(f"{w}: 'area' must be an int")
        out.append((sid, cid, int(bool(s.get("iscrowd", 0))), area))
    check_unique((s[0] for s in out), where, "segment id")
    return tuple(out)


def decode_frame(
    path: Path, *, size: tuple[int, int], segments: tuple[tuple[int, int, int, int | None], ...],
    thing_ids: tuple[int, ...],
) -> FrameLabels:  # fmt: skip
    """FrameLabels of one RGB-id PNG; every non-zero id must be listed in segments_info and vice versa,
    listed areas must equal the pixel counts."""
    ids = read_id_png(path, size)
    uniq, counts = check_listed_ids(ids, (s[0] for s in segments), str(path))
    count_of = dict(zip(uniq.tolist(), counts.tolist()))
    for sid, _, _, area in segments:
        if area is not None and area != count_of[sid]:
            raise AnnotationFormatError(f"{path}: segment {sid} has area {area} in the JSON, {count_of[sid]} px")
    seg_class = {s[0]: s[1] for s in segments}
    track_of = {s[0]: s[0] for s in segments if s[1] in thing_ids and not s[2]}
    semantic, masks = labels_from_ids(ids, seg_class, track_of)
    return FrameLabels(masks=masks, semantic=semantic, void=ids == 0)


def read(root: Path, split: str, *, all_frames: bool = False, **options: Any) -> DatasetRecord:
    """Read a Cityscapes-VPS split from its panoptic GT JSON. Frames = the annotated frames of `img/`
    (all frames of `img_all/` with `all_frames=True`). PNGs are checked against segments_info on decode."""
    if options:
        raise TypeError(f"cityscapes_vps.read: unknown options {sorted(options)}")
    root = Path(root)
    json_path = gt_json_path(root, split)
    data = load_json(json_path)
    where = str(json_path)
    cats = parse_categories(require_key(data, "categories", where, list), where)
    cat_ids = {c.id for c in cats}
    things = tuple(c.id for c in cats if c.isthing)
    img_dir = require_dir(root / split / "img", "Cityscapes-VPS img folder")
    pan_dir = require_dir(root / split / "panoptic_video", "Cityscapes-VPS panoptic_video folder")
    images = {}
    for i, im in enumerate(require_key(data, "images", where, list)):
        w = f"{where}: images[{i}]"
        iid = require_key(im, "id", w, str)
        if iid in images:
            raise AnnotationFormatError(f"{w}: duplicate image id {iid!r}")
        images[iid] = (require_key(im, "file_name", w, str), require_key(im, "height", w, int),
                       require_key(im, "width", w, int))  # fmt: skip
    per_video: dict[str, list[tuple]] = {}
    order = []
    for i, ann in enumerate(require_key(data, "annotations", where, list)):
        w = f"{where}: annotations[{i}]"
        iid = require_key(ann, "image_id", w, str)
        if iid not in images:
            raise AnnotationFormatError(f"{w}: image_id {iid!r} is not in 'images'")
        file_name, height, width = images[iid]
        png = require_file(pan_dir / require_key(ann, "file_name", w, str), f"panoptic PNG of {iid}")
        image = require_file(img_dir / file_name, f"frame of annotation {iid}")
        segments = parse_segments(require_key(ann, "segments_info", w, list), cat_ids, w)
        per_video.setdefault(iid[:4], []).append((image, png, segments, height, width, iid))
        order.append(iid)
    check_unique(order, where, "annotation image_id")
    videos = []
    for vid, entries in per_video.items():
        entries.sort(key=lambda e: e[0].name)
        videos.append(_video_record(root, split, vid, entries, things, all_frames))
    return DatasetRecord(
        name=FORMAT, format=FORMAT, split=split, root=root, categories=cats, videos=videos,
        meta={"annotation_order": order, "thing_ids": list(things)},
    )  # fmt: skip


def _video_record(
    root: Path, split: str, vid: str, entries: list[tuple], things: tuple[int, ...], all_frames: bool
) -> VideoRecord:
    sizes = {(e[3], e[4]) for e in entries}
    if len(sizes) != 1:
        raise AnnotationFormatError(f"{gt_json_path(root, split)}: video {vid} has frames of sizes {sorted(sizes)}")
    height, width = sizes.pop()
    if all_frames:
        all_dir = require_dir(root / split / "img_all", "Cityscapes-VPS img_all folder")
        paths = sorted(p for p in all_dir.glob(f"{vid}_*.png") if p.is_file())
    else:
        paths = [e[0] for e in entries]
    index = {p.name: i for i, p in enumerate(paths)}
    tracks: dict[int, TrackInfo] = {}
    annotations = []
    for image, png, segments, _, _, iid in entries:
        if image.name not in index:
            raise AnnotationFormatError(f"{root / split / 'img_all'}: annotated frame {image.name} is missing")
        tids = []
        for sid, cid, crowd, _ in segments:
            if cid in things and not crowd:
                known = tracks.setdefault(sid, TrackInfo(track_id=sid, category_id=cid))
                if known.category_id != cid:
                    raise AnnotationFormatError(
                        f"{gt_json_path(root, split)}: {iid}: segment {sid} has category {cid}, "
                        f"category {known.category_id} in an earlier frame of video {vid}"
                    )
                tids.append(sid)
        decoder = partial(decode_frame, size=(height, width), segments=segments, thing_ids=things)
        annotations.append(
            FrameAnnotation(frame=index[image.name], label_map=png, decoder=decoder, track_ids=frozenset(tids))
        )
    return VideoRecord(
        video_id=vid,
        frames=FrameSource(kind="images", paths=paths, names=[p.stem for p in paths]),
        height=height,
        width=width,
        tracks=dict(sorted(tracks.items())),
        annotations=sorted(annotations, key=lambda a: a.frame),
        meta={"image_ids": {index[e[0].name]: e[5] for e in entries}},
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
    **options: Any,
) -> dict[str, str]:
    """Write GT in the Cityscapes-VPS layout (frames PNG, RGB-id PNGs, panoptic GT JSON). Video ids that
    are not all 4-digit strings are renumbered 0001, 0002, ... in list order (returned as a mapping).
    Frame k is named frame number 5k. Thing tracks keep their track id as segment id; stuff of category c
    gets id base + c and the crowd of thing class c gets base + K + c (base = 1 + largest track id,
    K = 1 + largest category id). `frames_per_video` (6 like the official data; None = any) is enforced."""
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
    return {v.video_id: n for v, n in zip(videos, names)}


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
        positions = prediction_frames(pred, video, video.annotated_frames, where)
        maps = prediction_panoptic_maps(pred, where)
        seg_ids = SegmentIds()
        for f, p in zip(video.annotated_frames, positions):
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
        if sorted(got) != video.annotated_frames:
            raise AnnotationFormatError(
                f"{where}: video {video.video_id} has predictions for frames {sorted(got)}, "
                f"expected the annotated frames {video.annotated_frames}"
            )
        out.append(
            VideoPrediction(
                video_id=video.video_id, height=video.height, width=video.width,
                frame_names=[video.frames.names[f] for f in sorted(got)],
                panoptic_maps=[got[f] for f in sorted(got)],
            )
        )  # fmt: skip
    return out
