"""VIPSeg converted layout (official ``create_panoptic_video_labels.py`` + ``splitjson.py`` output):
``images/<video>/<frame>.jpg``, ``panomasksRGB/<video>/<frame>.png`` (RGB ids) and
``panoptic_gt_VIPSeg_<split>.json`` ({videos: [{video_id, images}], annotations: [{video_id, annotations:
[{image_id, file_name, segments_info}]}], categories}). Track id = the segment id of a thing segment.
Used by `vipseg.read` / `vipseg.write_ground_truth(layout="converted")`.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from vidseg.data.formats.cityscapes_vps import decode_frame, parse_categories, parse_segments
from vidseg.data.formats.common import check_unique, load_json, require_file, require_key
from vidseg.data.formats.vps_common import check_name
from vidseg.data.records import (
    AnnotationFormatError,
    DatasetRecord,
    FrameAnnotation,
    FrameSource,
    TrackInfo,
    VideoRecord,
)

FORMAT = "vipseg"
MAX_STUFF_VALUE = 124  # raw values <= 124 are stuff (1-based category), larger ones things


def converted_json_path(root: Path, split: str) -> Path:
    return Path(root) / f"panoptic_gt_VIPSeg_{split}.json"


def read_converted(root: Path, split: str) -> DatasetRecord:
    """Read the converted layout of `split`; PNGs are checked against segments_info on decode."""
    json_path = converted_json_path(root, split)
    data = load_json(json_path)
    where = str(json_path)
    cats = parse_categories(require_key(data, "categories", where, list), where)
    cat_ids = {c.id for c in cats}
    things = tuple(c.id for c in cats if c.isthing)
    anns_by_video = {}
    for i, entry in enumerate(require_key(data, "annotations", where, list)):
        vid = require_key(entry, "video_id", f"{where}: annotations[{i}]", str)
        anns_by_video[vid] = require_key(entry, "annotations", f"{where}: annotations[{i}]", list)
    videos = []
    for i, entry in enumerate(require_key(data, "videos", where, list)):
        w = f"{where}: videos[{i}]"
        vid = check_name(require_key(entry, "video_id", w, str), w)
        images = require_key(entry, "images", w, list)
        if vid not in anns_by_video or len(anns_by_video[vid]) != len(images):
            raise AnnotationFormatError(f"{w}: video {vid!r} needs one annotation per image in 'annotations'")
        frames, annotations, tracks, file_names, sizes = [], [], {}, {}, set()
        for t, (im, ann) in enumerate(zip(images, anns_by_video[vid])):
            wt = f"{w} images[{t}]"
            stem = Path(require_key(im, "file_name", wt, str)).stem
            sizes.add((require_key(im, "height", wt, int), require_key(im, "width", wt, int)))
            frames.append(require_file(root / "images" / vid / f"{stem}.jpg", f"frame of {vid}/{stem}"))
            png_name = require_key(ann, "file_name", f"{wt} annotation", str)
            png = require_file(root / "panomasksRGB" / vid / png_name, f"panomasksRGB PNG of {vid}")
            segments = parse_segments(require_key(ann, "segments_info", wt, list), cat_ids, wt)
            tids = set()
            for sid, cid, crowd, _ in segments:
                if cid in things and not crowd:
                    if tracks.setdefault(sid, TrackInfo(track_id=sid, category_id=cid)).category_id != cid:
                        raise AnnotationFormatError(f"{wt}: segment {sid} changes category within video {vid}")
                    tids.add(sid)
            annotations.append((t, png, segments, frozenset(tids)))
            file_names[t] = png_name
        if len(sizes) != 1:
            raise AnnotationFormatError(f"{w}: frames of different sizes {sorted(sizes)}")
        size = sizes.pop()
        anns = [
            FrameAnnotation(frame=t, label_map=png, track_ids=tids,
                            decoder=partial(decode_frame, size=size, segments=segs, thing_ids=things))
            for t, png, segs, tids in annotations
        ]  # fmt: skip
        videos.append(
            VideoRecord(
                video_id=vid, frames=FrameSource(kind="images", paths=frames, names=[p.stem for p in frames]),
                height=size[0], width=size[1], tracks=dict(sorted(tracks.items())), annotations=anns,
                meta={"file_names": file_names},
            )
        )  # fmt: skip
    check_unique((v.video_id for v in videos), where, "video_id")
    return DatasetRecord(name=FORMAT, format=FORMAT, split=split, root=root, categories=cats, videos=videos,
                         meta={"layout": "converted"})  # fmt: skip


def add_converted_entry(converted: dict, video: str, frame: str, raw: np.ndarray) -> None:
    """Append one frame to a converted-layout JSON under construction (ids = raw values, ascending)."""
    if not converted["videos"] or converted["videos"][-1]["video_id"] != video:
        converted["videos"].append({"video_id": video, "images": []})
        converted["annotations"].append({"video_id": video, "annotations": []})
    h, w = raw.shape
    converted["videos"][-1]["images"].append({"id": frame, "width": w, "height": h, "file_name": f"{frame}.png"})
    values, counts = np.unique(raw, return_counts=True)
    segments = [
        {"id": v, "category_id": v - 1 if v <= MAX_STUFF_VALUE else v // 100 - 1, "iscrowd": 0, "area": n}
        for v, n in zip(values.tolist(), counts.tolist()) if v != 0
    ]  # fmt: skip
    converted["annotations"][-1]["annotations"].append(
        {"image_id": frame, "file_name": f"{frame}.png", "segments_info": segments}
    )
