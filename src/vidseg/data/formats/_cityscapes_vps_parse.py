"""Cityscapes-VPS JSON parsing shared with the VIPSeg readers: categories, segments_info and the decoding of
one RGB-id PNG (re-exported by `vidseg.data.formats.cityscapes_vps`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vidseg.data.formats.common import check_unique, require_key
from vidseg.data.formats.vps_common import (
    MAX_SEGMENT_ID,
    category_from_json,
    check_listed_ids,
    labels_from_ids,
    read_id_png,
)
from vidseg.data.records import AnnotationFormatError, Category, FrameLabels

Segment = tuple[int, int, int, "int | None"]  # (id, category_id, iscrowd 0/1, area or None)


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


def _iscrowd(value: Any, where: str) -> int:
    """0/1 (or false/true); anything else ("no", 2, 0.5, null) is an error rather than a truthiness guess."""
    if type(value) in (int, bool) and value in (0, 1):
        return int(value)
    raise AnnotationFormatError(f"{where}: 'iscrowd' must be 0, 1, true or false, got {value!r}")


def parse_segments(raw: Any, cat_ids: set[int], where: str) -> tuple[Segment, ...]:
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
        out.append((sid, cid, _iscrowd(s.get("iscrowd", 0), f"{w} (segment {sid})"), area))
    check_unique((s[0] for s in out), where, "segment id")
    return tuple(out)


def decode_frame(
    path: Path, *, size: tuple[int, int], segments: tuple[Segment, ...], thing_ids: tuple[int, ...],
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
