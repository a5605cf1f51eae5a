"""VIPSeg: raw panomask layout (and the official 720P converted layout) for VPS; VPQ/STQ results.

Raw layout: ``imgs/<video>/<frame>.jpg``, ``panomasks/<video>/<frame>.png`` (single channel, 8/16 bit),
split lists ``<split>.txt``, ``panoVIPSeg_categories.json`` ({id 0..123, name, isthing, color}).
Raw value v: 0 = void; v <= 124 = stuff of 1-based category v; v >= 125 = thing of 1-based category
v // 100, instance v % 100; 0-based category = 1-based - 1. Track id (raw layout) = the raw value v.

Converted layout (``create_panoptic_video_labels.py`` + ``splitjson.py``): ``images/<video>/<frame>.jpg``,
``panomasksRGB/<video>/<frame>.png`` (RGB ids) and ``panoptic_gt_VIPSeg_<split>.json``; it is read when
that JSON exists (or with ``layout="converted"``). Track id = the RGB segment id of a thing segment.

Results: ``<out>/pan_pred/<video>/<GT file_name>`` (RGB ids) + ``<out>/pred.json``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from vidseg.data.formats.cityscapes_vps import parse_categories, parse_segments
from vidseg.data.formats.common import (
    check_unique,
    davis_palette,
    load_json,
    read_png,
    require_key,
    write_json_atomic,
)
from vidseg.data.formats.vipseg_converted import (
    MAX_STUFF_VALUE,
    add_converted_entry,
    converted_json_path,
    read_converted,
)
from vidseg.data.formats.vps_common import (
    SegmentIds,
    check_ground_truth,
    check_listed_ids,
    check_name,
    check_panoptic_values,
    frames_of_video,
    label_files,
    labels_from_ids,
    prediction_frames,
    prediction_panoptic_maps,
    read_id_png,
    read_split_list,
    scanned_annotations,
    write_frame,
    write_id_png,
)
from vidseg.data.records import (
    IGNORE_LABEL,
    AnnotationFormatError,
    Category,
    DatasetRecord,
    FrameLabels,
    GroundTruthVideo,
    VideoPrediction,
    VideoRecord,
)

FORMAT = "vipseg"
CATEGORIES_FILE = "panoVIPSeg_categories.json"
NUM_CODES = 2**16


def load_categories(root: Path) -> list[Category]:
    """panoVIPSeg_categories.json; ids must be unique and in 0..123 (the raw encoding holds 1..124)."""
    path = Path(root) / CATEGORIES_FILE
    cats = parse_categories(load_json(path), str(path))
    bad = [c.id for c in cats if not 0 <= c.id < MAX_STUFF_VALUE]
    if bad:
        raise AnnotationFormatError(f"{path}: category id {bad[0]} outside 0..{MAX_STUFF_VALUE - 1}")
    return cats


@lru_cache(maxsize=8)
def _raw_lut(vocabulary: tuple[tuple[int, bool], ...]) -> np.ndarray:
    """Raw value -> 0-based category (IGNORE_LABEL for 0, -1 where undecodable), for all 16-bit values."""
    lut = np.full(NUM_CODES, -1, dtype=np.int32)
    lut[0] = IGNORE_LABEL
    for cid, isthing in vocabulary:
        if isthing:
            codes = np.arange((cid + 1) * 100, (cid + 1) * 100 + 100)
            lut[codes[codes > MAX_STUFF_VALUE]] = cid
        else:
            lut[cid + 1] = cid
    return lut


def _why_undecodable(v: int, isthing: dict[int, bool]) -> str:
    if v <= MAX_STUFF_VALUE:
        cid = v - 1
        return (
            f"stuff value of unknown category {cid}" if cid not in isthing else f"stuff value of thing category {cid}"
        )
    cid = v // 100 - 1
    if v // 100 > MAX_STUFF_VALUE:
        return f"thing code with 1-based category {v // 100} > {MAX_STUFF_VALUE}"
    return f"thing code of unknown category {cid}" if cid not in isthing else f"thing code of stuff category {cid}"


def read_raw_mask(
    path: Path, size: tuple[int, int] | None, vocabulary: tuple[tuple[int, bool], ...]
) -> tuple[np.ndarray, np.ndarray]:
    """(raw values int64, semantic int32) of a raw panomask; undecodable values raise naming file/value."""
    raw = read_png(path, channels=1, size=size).astype(np.int64)
    if raw.min(initial=0) < 0 or raw.max(initial=0) >= NUM_CODES:
        raise AnnotationFormatError(f"{path}: panomask value {int(raw.max())} outside 0..{NUM_CODES - 1}")
    semantic = _raw_lut(vocabulary)[raw]
    bad = semantic < 0
    if bad.any():
        v = int(raw[bad][0])
        raise AnnotationFormatError(f"{path}: undecodable panomask value {v} ({_why_undecodable(v, dict(vocabulary))})")
    return raw, semantic


def decode_raw_mask(path: Path, *, size: tuple[int, int], vocabulary: tuple[tuple[int, bool], ...]) -> FrameLabels:
    """FrameLabels of a raw panomask: masks keyed by raw thing value, semantic 0-based, void = value 0."""
    raw, semantic = read_raw_mask(path, size, vocabulary)
    masks = {int(v): raw == v for v in np.unique(raw[raw > MAX_STUFF_VALUE]).tolist()}
    return FrameLabels(masks=masks, semantic=semantic, void=raw == 0)


def _scan_raw(path: Path, size: tuple[int, int], vocabulary: tuple[tuple[int, bool], ...]) -> list[int]:
    raw, _ = read_raw_mask(path, size, vocabulary)
    return [int(v) for v in np.unique(raw[raw > MAX_STUFF_VALUE]).tolist()]


def read(
    root: Path,
    split: str,
    *,
    layout: Literal["auto", "raw", "converted"] = "auto",
    require_annotations: bool | None = None,
    num_workers: int = 4,
    **options: Any,
) -> DatasetRecord:
    """Read a VIPSeg split. Raw layout: every panomask is decoded once here (validation, track list)."""
    if options:
        raise TypeError(f"vipseg.read: unknown options {sorted(options)}")
    root = Path(root)
    if layout == "converted" or (layout == "auto" and converted_json_path(root, split).is_file()):
        return read_converted(root, split)
    cats = load_categories(root)
    vocabulary = tuple((c.id, c.isthing) for c in cats)
    if require_annotations is None:
        require_annotations = split != "test"
    videos = []
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        for name in read_split_list(root / f"{split}.txt"):
            frames, index, (height, width) = frames_of_video(root / "imgs" / name, "video without frames")
            required = f"panomasks folder of video {name}" if require_annotations else None
            masks = label_files(root / "panomasks" / name, required, index, "panomask", root / "imgs" / name, ".jpg")
            scans = list(pool.map(lambda m, s=(height, width): _scan_raw(m, s, vocabulary), masks))
            decoder = partial(decode_raw_mask, size=(height, width), vocabulary=vocabulary)
            tracks, annotations = scanned_annotations(masks, scans, index, decoder, lambda v: v // 100 - 1)
            videos.append(
                VideoRecord(
                    video_id=name,
                    frames=frames,
                    height=height,
                    width=width,
                    tracks=tracks,
                    annotations=annotations,
                    meta={"file_names": {a.frame: a.label_map.name for a in annotations}},  # type: ignore[union-attr]
                )
            )
    return DatasetRecord(name=FORMAT, format=FORMAT, split=split, root=root, categories=cats, videos=videos,
                         meta={"layout": "raw"})  # fmt: skip


def raw_track_codes(video: GroundTruthVideo) -> dict[int, int]:
    """GT track id -> raw panomask value: per thing category (1-based c), tracks in ascending id order get
    instances from the first i with c * 100 + i >= 125; at most 100 (75 for c = 1) tracks per class."""
    codes: dict[int, int] = {}
    used: dict[int, int] = {}
    for tid in sorted(video.track_categories):
        c1 = video.track_categories[tid] + 1
        start = max(0, MAX_STUFF_VALUE + 1 - c1 * 100)
        inst = start + used.get(c1, 0)
        if inst > 99:
            raise AnnotationFormatError(
                f"video {video.video_id!r}: more than {100 - start} tracks of category {c1 - 1}"
            )
        used[c1] = used.get(c1, 0) + 1
        codes[tid] = c1 * 100 + inst
    return codes


def write_ground_truth(
    root: Path,
    split: str,
    videos: list[GroundTruthVideo],
    categories: list[Category],
    *,
    layout: Literal["raw", "converted"] = "raw",
    **options: Any,
) -> dict[str, dict[int, int]]:
    """Write GT in the raw VIPSeg layout (JPEG q95 frames, panomasks 8-bit when all values <= 255 else
    16-bit, ``<split>.txt``, ``panoVIPSeg_categories.json``); ``layout="converted"`` writes the converted
    layout instead (segment id = raw value, segments in ascending raw value so stuff comes first). VIPSeg
    has no crowd: thing-class pixels without a track are an error.
    Returns video_id -> {GT track id: raw value (= read-back track id in both layouts)}."""
    if options:
        raise TypeError(f"vipseg.write_ground_truth: unknown options {sorted(options)}")
    root = Path(root)
    where = f"{root} ({FORMAT} GT writer)"
    cats = list(categories)
    check_unique((c.id for c in cats), where, "category id")
    bad = [c.id for c in cats if not 0 <= c.id < MAX_STUFF_VALUE]
    if bad:
        raise AnnotationFormatError(f"{where}: VIPSeg category ids must be in 0..123, got {bad[0]}")
    palette = davis_palette()
    write_json_atomic(root / CATEGORIES_FILE, [
        {"id": c.id, "name": c.name, "isthing": int(c.isthing),
         "color": list(c.color) if c.color is not None else palette[3 * (c.id + 1) : 3 * (c.id + 2)]}
        for c in cats
    ])  # fmt: skip
    things = {c.id for c in cats if c.isthing}
    stuff_lut = np.zeros(max(max(c.id for c in cats), IGNORE_LABEL) + 1, dtype=np.int64)
    for c in cats:
        stuff_lut[c.id] = 0 if c.isthing else c.id + 1
    if layout not in ("raw", "converted"):
        raise ValueError(f"vipseg.write_ground_truth: layout must be 'raw' or 'converted', got {layout!r}")
    converted: dict[str, list] = {"videos": [], "annotations": []}
    all_codes = {}
    for video in videos:
        name = check_name(video.video_id, where)
        check_ground_truth(video, cats, where)
        codes = raw_track_codes(video)
        all_codes[name] = codes
        for t, frame in enumerate(video.frames):
            sem, inst = video.semantic_maps[t], video.instance_maps[t]
            crowd = np.isin(sem, list(things)) & (inst == 0)
            if crowd.any():
                raise AnnotationFormatError(
                    f"{where}: video {name!r} frame {t}: {int(crowd.sum())} thing-class pixels without a track "
                    "(VIPSeg has no crowd encoding)"
                )
            tids, inverse = np.unique(inst, return_inverse=True)
            code_of = np.array([codes.get(int(tid), 0) for tid in tids.tolist()], dtype=np.int64)
            raw = np.where(inst > 0, code_of[inverse.reshape(inst.shape)], stuff_lut[sem])
            if layout == "converted":
                write_frame(root / "images" / name / f"{t:08d}.jpg", frame)
                write_id_png(root / "panomasksRGB" / name / f"{t:08d}.png", raw)
                add_converted_entry(converted, name, f"{t:08d}", raw)
                continue
            write_frame(root / "imgs" / name / f"{t:08d}.jpg", frame)
            mask_path = root / "panomasks" / name / f"{t:08d}.png"
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            if raw.max() <= 255:
                Image.fromarray(raw.astype(np.uint8), mode="L").save(mask_path)
            else:
                Image.fromarray(raw.astype(np.uint16)).save(mask_path)
    (root / f"{split}.txt").write_text("".join(f"{v.video_id}\n" for v in videos), encoding="utf-8")
    if layout == "converted":
        converted["categories"] = load_json(root / CATEGORIES_FILE)
        write_json_atomic(converted_json_path(root, split), converted)
    return all_codes


def write_results(out: Path, predictions: list[VideoPrediction], dataset: DatasetRecord, **options: Any) -> Path:
    """Write ``pan_pred/<video>/<GT file_name>`` and ``pred.json`` (one entry per video in dataset order,
    one segments_info list per annotated frame in GT order, stuff listed first). Every video needs one."""
    if options:
        raise TypeError(f"vipseg.write_results: unknown options {sorted(options)}")
    out = Path(out)
    where = f"{out} ({FORMAT} results)"
    by_id = {p.video_id: p for p in predictions}
    known_videos = {v.video_id for v in dataset.videos}
    unknown = sorted(set(by_id) - known_videos)
    missing = [v.video_id for v in dataset.videos if v.video_id not in by_id]
    if unknown or missing:
        raise AnnotationFormatError(f"{where}: predictions for unknown videos {unknown}, none for {missing}")
    things = {c.id for c in dataset.categories if c.isthing}
    known = [c.id for c in dataset.categories]
    entries = []
    for video in dataset.videos:
        pred = by_id[video.video_id]
        positions = prediction_frames(pred, video, video.annotated_frames, where)
        maps = prediction_panoptic_maps(pred, where)
        seg_ids = SegmentIds()
        frame_entries = []
        for f, p in zip(video.annotated_frames, positions):
            file_name = video.meta["file_names"][f]
            sem, inst = maps[p]
            check_panoptic_values(sem, inst, known, f"{where}: {video.video_id}/{file_name}")
            ids, segments = seg_ids.encode(sem, inst, things)
            write_id_png(out / "pan_pred" / video.video_id / file_name, ids)
            frame_entries.append({"image_id": video.frames.names[f], "file_name": file_name,
                                  "segments_info": segments})  # fmt: skip
        entries.append({"video_id": video.video_id, "annotations": frame_entries})
    write_json_atomic(out / "pred.json", {"annotations": entries})
    return out


def read_results(path: Path, dataset: DatasetRecord) -> list[VideoPrediction]:
    """Read ``pred.json`` + ``pan_pred/`` into panoptic_maps (semantic = segment category, instance =
    segment id for thing categories, 0 for stuff). Frames pair with the GT annotated frames by position."""
    path = Path(path)
    folder = path.parent if path.suffix == ".json" else path
    json_path = path if path.suffix == ".json" else folder / "pred.json"
    data = load_json(json_path)
    where = str(json_path)
    cat_ids = {c.id for c in dataset.categories}
    things = {c.id for c in dataset.categories if c.isthing}
    videos = {v.video_id: v for v in dataset.videos}
    got: dict[str, VideoPrediction] = {}
    for i, entry in enumerate(require_key(data, "annotations", where, list)):
        w = f"{where}: annotations[{i}]"
        vid = require_key(entry, "video_id", w, str)
        if vid not in videos or vid in got:
            raise AnnotationFormatError(f"{w}: video_id {vid!r} is unknown or repeated")
        video = videos[vid]
        frames = require_key(entry, "annotations", w, list)
        if len(frames) != len(video.annotated_frames):
            raise AnnotationFormatError(f"{w}: {len(frames)} frames, the GT has {len(video.annotated_frames)}")
        maps = []
        for t, (fr, f) in enumerate(zip(frames, video.annotated_frames)):
            wt = f"{w} annotations[{t}]"
            segments = parse_segments(require_key(fr, "segments_info", wt, list), cat_ids, wt)
            png = folder / "pan_pred" / vid / fr.get("file_name", video.meta["file_names"][f])
            ids = read_id_png(png, (video.height, video.width))
            check_listed_ids(ids, (s[0] for s in segments), str(png))
            semantic, _ = labels_from_ids(ids, {s[0]: s[1] for s in segments}, {})
            thing_ids = np.array([s[0] for s in segments if s[1] in things], dtype=np.int64)
            maps.append((semantic, np.where(np.isin(ids, thing_ids), ids, 0).astype(np.int32)))
        got[vid] = VideoPrediction(video_id=vid, height=video.height, width=video.width,
                                   frame_names=[video.frames.names[f] for f in video.annotated_frames],
                                   panoptic_maps=maps)  # fmt: skip
    missing = [v for v in videos if v not in got]
    if missing:
        raise AnnotationFormatError(f"{where}: no predictions for videos {missing}")
    return [got[v.video_id] for v in dataset.videos]
