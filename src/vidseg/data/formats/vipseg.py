"""VIPSeg: raw panomask layout (and the official 720P converted layout) for VPS; VPQ/STQ results.

Raw layout: ``imgs/<video>/<frame>.jpg``, ``panomasks/<video>/<frame>.png`` (single channel, 8/16 bit),
split lists ``<split>.txt``, ``panoVIPSeg_categories.json`` ({id 0..123, name, isthing, color}).
Raw value v: 0 = void; v <= 124 = stuff of 1-based category v; v >= 125 = thing of 1-based category
v // 100, instance v % 100; 0-based category = 1-based - 1. Track id (raw layout) = the raw value v.

Converted layout (``create_panoptic_video_labels.py`` + ``splitjson.py``): ``images/<video>/<frame>.jpg``,
``panomasksRGB/<video>/<frame>.png`` (RGB ids) and ``panoptic_gt_VIPSeg_<split>.json``; it is read when
that JSON exists (or with ``layout="converted"``). Track id = the RGB segment id of a thing segment.

Dataset erratum: the released val panomask ``panomasks/353_-5sqmCF8OFU/00000392.png`` holds raw value 200
(a thing code of the stuff category ceiling); the maintainers confirmed it is a bug and the value is void
(VIPSeg-Dataset issue #1). Raw value 200, where it is undecodable, is read as void with a
`VIPSegErratumWarning` naming the file and the pixel count; every other undecodable value is an error.

Results: ``<out>/pan_pred/<video>/<GT file_name>`` (RGB ids) + ``<out>/pred.json``, by default at the size of
the GT the official metrics read (raw layout: the ``change2_720p.py`` size, see `write_results`).
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from vidseg.data.formats import _vipseg_results
from vidseg.data.formats.cityscapes_vps import parse_categories
from vidseg.data.formats.common import (
    check_unique,
    davis_palette,
    load_json,
    read_png,
    write_json_atomic,
)
from vidseg.data.formats.scan_cache import ScanCache, one_file
from vidseg.data.formats.vipseg_converted import (
    MAX_STUFF_VALUE,
    add_converted_entry,
    converted_json_path,
    read_converted,
)
from vidseg.data.formats.vps_common import (
    check_ground_truth,
    check_name,
    frames_of_video,
    label_files,
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
    VideoRecord,
)

FORMAT = "vipseg"
CATEGORIES_FILE = "panoVIPSeg_categories.json"
NUM_CODES = 2**16
ERRATUM_VALUE = 200  # VIPSeg-Dataset issue #1: stray value in 353_-5sqmCF8OFU/00000392.png, confirmed void


class VIPSegErratumWarning(UserWarning):
    """A documented VIPSeg dataset erratum was repaired while reading (see the module docstring)."""


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
    path: Path, size: tuple[int, int] | None, vocabulary: tuple[tuple[int, bool], ...], *, warn: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(raw values int64, semantic int32) of a raw panomask; undecodable values raise naming file/value,
    except the documented erratum value 200 (set to void 0, with a `VIPSegErratumWarning` if `warn`)."""
    raw, semantic, erratum = _decode_raw(path, size, vocabulary)
    if erratum and warn:
        _warn_erratum(path, erratum, stacklevel=3)
    return raw, semantic


def _warn_erratum(path: Path, pixels: int, stacklevel: int = 2) -> None:
    warnings.warn(
        f"{path}: {pixels} pixels of undecodable panomask value {ERRATUM_VALUE} read as void "
        "(known VIPSeg dataset erratum, VIPSeg-Dataset issue #1)",
        VIPSegErratumWarning,
        stacklevel=stacklevel,
    )


def _decode_raw(
    path: Path, size: tuple[int, int] | None, vocabulary: tuple[tuple[int, bool], ...]
) -> tuple[np.ndarray, np.ndarray, int]:  # fmt: skip
    """`read_raw_mask` without the warning: (raw, semantic, pixels of the erratum value set to void)."""
    raw = read_png(path, channels=1, size=size).astype(np.int64)
    if raw.min(initial=0) < 0 or raw.max(initial=0) >= NUM_CODES:
        raise AnnotationFormatError(f"{path}: panomask value {int(raw.max())} outside 0..{NUM_CODES - 1}")
    semantic = _raw_lut(vocabulary)[raw]
    bad = semantic < 0
    erratum = bad & (raw == ERRATUM_VALUE)
    if erratum.any():
        raw[erratum] = 0
        semantic[erratum] = IGNORE_LABEL
        bad &= ~erratum
    if bad.any():
        v = int(raw[bad][0])
        raise AnnotationFormatError(f"{path}: undecodable panomask value {v} ({_why_undecodable(v, dict(vocabulary))})")
    return raw, semantic, int(erratum.sum())


def decode_raw_mask(path: Path, *, size: tuple[int, int], vocabulary: tuple[tuple[int, bool], ...]) -> FrameLabels:
    """FrameLabels of a raw panomask: masks keyed by raw thing value, semantic 0-based, void = value 0."""
    raw, semantic = read_raw_mask(path, size, vocabulary, warn=False)  # read() already warned
    masks = {int(v): raw == v for v in np.unique(raw[raw > MAX_STUFF_VALUE]).tolist()}
    return FrameLabels(masks=masks, semantic=semantic, void=raw == 0)


def _scan_raw(path: Path, size: tuple[int, int], vocabulary: tuple[tuple[int, bool], ...]) -> list[Any]:
    """[track values, erratum pixels] of one panomask (a JSON value, for the scan cache)."""
    raw, _, erratum = _decode_raw(path, size, vocabulary)
    return [[int(v) for v in np.unique(raw[raw > MAX_STUFF_VALUE]).tolist()], erratum]


def read(
    root: Path,
    split: str,
    *,
    layout: Literal["auto", "raw", "converted"] = "auto",
    require_annotations: bool | None = None,
    num_workers: int = 4,
    **options: Any,
) -> DatasetRecord:
    """Read a VIPSeg split. Raw layout: every panomask is decoded here (validation, track list), unless the scan
    cache (`vidseg.data.formats.scan_cache`) holds its result from an earlier read of the same bytes."""
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
    key = {"root": str(root.resolve()), "split": split, "vocabulary": vocabulary}
    with ScanCache(FORMAT, key) as cache, ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        for name in read_split_list(root / f"{split}.txt"):
            frames, index, (height, width) = frames_of_video(root / "imgs" / name, "video without frames")
            required = f"panomasks folder of video {name}" if require_annotations else None
            masks = label_files(root / "panomasks" / name, required, index, "panomask", root / "imgs" / name, ".jpg")
            scan = partial(_scan_raw, size=(height, width), vocabulary=vocabulary)
            found = cache.map(pool, scan, masks, one_file, lambda _, size=[height, width]: size)
            for mask, (_, erratum) in zip(masks, found):
                if erratum:
                    _warn_erratum(mask, erratum)
            scans = [ids for ids, _ in found]
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


# results: ``pan_pred/<video>/<GT file_name>`` + ``pred.json``, by default at the size the official metrics read
# (raw layout: ``change2_720p.py``'s 720P); read back at the frame size (`_vipseg_results`)
write_results = _vipseg_results.write_results
read_results = _vipseg_results.read_results
