"""KITTI-STEP (deeplab2 layout): VPS ground truth and STQ result PNGs.

Layout: ``images/<split>/<seq>/<frame>.png`` and ``panoptic_maps/<split>/<seq>/<frame>.png`` (RGB,
R = semantic train id, G * 256 + B = instance; 255 = void; instance 0 on a thing class = crowd).

Track ids: ``track_id = semantic << 16 | instance`` (the STQ panoptic label, ``label_bit_shift = 16``), so a
track id names its class and identity and is unique per sequence. Vocabulary: the 19 Cityscapes train ids
with things person (11) and car (13); a ``vidseg_categories.json`` at the root (written by
`write_ground_truth`, e.g. for synthetic data) or the ``categories`` option replaces it.
Results: the same PNG encoding under ``<out>/<seq>/<frame>.png``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from vidseg.data.formats.common import (
    load_json,
    read_png,
    require_dir,
    write_json_atomic,
    write_rgb_png,
)
from vidseg.data.formats.scan_cache import ScanCache, one_file
from vidseg.data.formats.vps_common import (
    category_from_json,
    check_ground_truth,
    check_name,
    check_panoptic_values,
    cityscapes_categories,
    frames_of_video,
    label_files,
    prediction_frames,
    prediction_panoptic_maps,
    result_pngs,
    scanned_annotations,
    write_frame,
)
from vidseg.data.records import (
    IGNORE_LABEL,
    AnnotationFormatError,
    Category,
    DatasetRecord,
    FrameLabels,
    GroundTruthVideo,
    MissingFileError,
    VideoPrediction,
    VideoRecord,
)

FORMAT = "kitti_step"
THING_IDS = (11, 13)
CATEGORIES_FILE = "vidseg_categories.json"
LABEL_BIT_SHIFT = 16
MAX_INSTANCE = 2**16 - 1


def default_categories() -> list[Category]:
    """The 19 Cityscapes train ids; only person and car are things in KITTI-STEP."""
    return cityscapes_categories(THING_IDS)


def track_id(semantic: int, instance: int) -> int:
    """Track id of (semantic, instance): the STQ panoptic label ``semantic << 16 | instance``."""
    return (int(semantic) << LABEL_BIT_SHIFT) | int(instance)


def split_track_id(tid: int) -> tuple[int, int]:
    """(semantic, instance) of a KITTI-STEP track id."""
    return tid >> LABEL_BIT_SHIFT, tid & MAX_INSTANCE


def _luts(category_ids: tuple[int, ...], thing_ids: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    valid = np.zeros(256, dtype=bool)
    valid[list(category_ids)] = True
    valid[IGNORE_LABEL] = True
    thing = np.zeros(256, dtype=bool)
    thing[list(thing_ids)] = True
    return valid, thing


def read_panoptic_png(
    path: Path, size: tuple[int, int] | None, category_ids: tuple[int, ...], thing_ids: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """(semantic int32, instance int32) of one panoptic PNG, validated: 3 channels, size, semantic ids in
    the vocabulary or 255, no instance id on a stuff class."""
    rgb = read_png(path, channels=3, size=size)
    semantic = rgb[..., 0].astype(np.int32)
    instance = rgb[..., 1].astype(np.int32) * 256 + rgb[..., 2].astype(np.int32)
    valid, thing = _luts(category_ids, thing_ids)
    bad = ~valid[semantic]
    if bad.any():
        raise AnnotationFormatError(
            f"{path}: semantic id {int(semantic[bad][0])} (R channel) is not a category id or 255"
        )
    stuff_inst = (instance > 0) & ~thing[semantic] & (semantic != IGNORE_LABEL)
    if stuff_inst.any():
        inst_id, cls = int(instance[stuff_inst][0]), int(semantic[stuff_inst][0])
        raise AnnotationFormatError(f"{path}: instance id {inst_id} on stuff class {cls}")
    return semantic, instance


def _track_key(semantic: np.ndarray, instance: np.ndarray, thing_ids: tuple[int, ...]) -> np.ndarray:
    """int64 map of track ids (0 where no thing track: stuff, void, crowd)."""
    tracked = np.isin(semantic, thing_ids) & (instance > 0)
    return np.where(tracked, (semantic.astype(np.int64) << LABEL_BIT_SHIFT) | instance, 0)


def decode_panoptic_map(
    path: Path, *, height: int, width: int, category_ids: tuple[int, ...], thing_ids: tuple[int, ...]
) -> FrameLabels:
    """FrameLabels of one KITTI-STEP panoptic PNG: thing-track masks, semantic map, void mask."""
    semantic, instance = read_panoptic_png(path, (height, width), category_ids, thing_ids)
    key = _track_key(semantic, instance, thing_ids)
    masks = {int(t): key == t for t in np.unique(key[key > 0]).tolist()}
    return FrameLabels(masks=masks, semantic=semantic, void=semantic == IGNORE_LABEL)


def _scan(path: Path, size: tuple[int, int], cids: tuple[int, ...], things: tuple[int, ...]) -> list[int]:
    semantic, instance = read_panoptic_png(path, size, cids, things)
    key = _track_key(semantic, instance, things)
    return [int(t) for t in np.unique(key[key > 0]).tolist()]


def _color_tuple(color: Any) -> tuple[int, ...] | None:
    return tuple(color) if color is not None else None


def load_categories(root: Path, categories: list[Category] | None = None) -> list[Category]:
    """`categories` if given, else the root's vidseg_categories.json if present, else the default 19."""
    if categories is None:
        path = Path(root) / CATEGORIES_FILE
        if not path.is_file():
            return default_categories()
        data = load_json(path)
        if not isinstance(data, list) or not data:
            raise AnnotationFormatError(f"{path}: expected a non-empty list of categories")
        categories = []
        for i, c in enumerate(data):
            categories.append(category_from_json(c, f"{path}: category {i}", _color_tuple))
    ids = [c.id for c in categories]
    if len(set(ids)) != len(ids) or any(not 0 <= i < IGNORE_LABEL for i in ids):
        raise AnnotationFormatError(f"{root}: KITTI-STEP category ids must be unique and in 0..254, got {ids}")
    return categories


def read(
    root: Path,
    split: str,
    *,
    categories: list[Category] | None = None,
    require_annotations: bool | None = None,
    num_workers: int = 4,
    **options: Any,
) -> DatasetRecord:
    """Read a KITTI-STEP split. Every panoptic PNG is decoded here (validation and the track list), unless the
    scan cache (`vidseg.data.formats.scan_cache`) holds its result from an earlier read of the same bytes; frames
    are not decoded. `require_annotations` defaults to True except for the 'test' split."""
    if options:
        raise TypeError(f"kitti_step.read: unknown options {sorted(options)}")
    root = Path(root)
    cats = load_categories(root, categories)
    cids = tuple(c.id for c in cats)
    things = tuple(c.id for c in cats if c.isthing)
    image_dir = require_dir(root / "images" / split, f"KITTI-STEP images folder of split {split!r}")
    pan_dir = root / "panoptic_maps" / split
    if require_annotations is None:
        require_annotations = split != "test"
    if require_annotations:
        require_dir(pan_dir, f"KITTI-STEP panoptic_maps folder of split {split!r}")
    seqs = sorted(p.name for p in image_dir.iterdir() if p.is_dir())
    if not seqs:
        raise MissingFileError(f"{image_dir}: no sequence folders")
    videos = []
    key = {"root": str(root.resolve()), "split": split, "categories": [cids, things]}
    with ScanCache(FORMAT, key) as cache, ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        for seq in seqs:
            frames, index, (height, width) = frames_of_video(image_dir / seq, "sequence without frames")
            required = f"panoptic_maps folder of sequence {seq}" if require_annotations else None
            maps = label_files(pan_dir / seq, required, index, "panoptic map", image_dir / seq, ".*")
            scan = partial(_scan, size=(height, width), cids=cids, things=things)
            scans = cache.map(pool, scan, maps, one_file, lambda _, size=[height, width]: size)
            decoder = partial(decode_panoptic_map, height=height, width=width, category_ids=cids, thing_ids=things)
            tracks, annotations = scanned_annotations(maps, scans, index, decoder, lambda t: split_track_id(t)[0])
            videos.append(
                VideoRecord(
                    video_id=seq,
                    frames=frames,
                    height=height,
                    width=width,
                    tracks=tracks,
                    annotations=annotations,
                    meta={"track_id_rule": "semantic << 16 | instance"},
                )
            )
    return DatasetRecord(
        name=FORMAT, format=FORMAT, split=split, root=root, categories=cats, videos=videos,
        meta={"thing_ids": list(things), "label_bit_shift": LABEL_BIT_SHIFT},
    )  # fmt: skip


def encode_panoptic(semantic: np.ndarray, instance: np.ndarray, where: str) -> np.ndarray:
    """RGB PNG array of (semantic, instance): R = semantic, G = instance // 256, B = instance % 256."""
    if semantic.min(initial=0) < 0 or semantic.max(initial=0) > 255:
        raise AnnotationFormatError(f"{where}: semantic ids must be in 0..255")
    if instance.min(initial=0) < 0 or instance.max(initial=0) > MAX_INSTANCE:
        raise AnnotationFormatError(f"{where}: instance ids must be in 0..{MAX_INSTANCE}")
    return np.stack([semantic, instance // 256, instance % 256], axis=-1).astype(np.uint8)


def write_ground_truth(
    root: Path, split: str, videos: list[GroundTruthVideo], categories: list[Category], **options: Any
) -> None:
    """Write GT in the KITTI-STEP layout: frames as PNG, panoptic PNGs with instance = the GT track id
    (so a read-back track id is ``category << 16 | original track id``; ids must be <= 65535), crowd =
    thing pixels without a track. The vocabulary goes to ``vidseg_categories.json``."""
    if options:
        raise TypeError(f"kitti_step.write_ground_truth: unknown options {sorted(options)}")
    root = Path(root)
    cats = load_categories(root, list(categories))
    write_json_atomic(root / CATEGORIES_FILE, [asdict(c) for c in cats])
    for video in videos:
        seq = check_name(video.video_id, f"{root} ({FORMAT} GT writer)")
        check_ground_truth(video, cats, f"{root} ({FORMAT} GT writer)")
        too_big = [t for t in video.track_categories if t > MAX_INSTANCE]
        if too_big:
            raise AnnotationFormatError(f"video {seq!r}: track id {too_big[0]} exceeds {MAX_INSTANCE} (G*256+B)")
        for t, frame in enumerate(video.frames):
            name = f"{t:06d}.png"
            write_frame(root / "images" / split / seq / name, frame)
            rgb = encode_panoptic(video.semantic_maps[t], video.instance_maps[t], f"video {seq!r} frame {t}")
            write_rgb_png(root / "panoptic_maps" / split / seq / name, rgb)


def write_results(out: Path, predictions: list[VideoPrediction], dataset: DatasetRecord, **options: Any) -> Path:
    """Write ``<out>/<seq>/<frame>.png`` for every annotated frame of each predicted sequence (every frame
    when the split has no annotations). Predictions: panoptic_maps or tracks + semantic_maps."""
    if options:
        raise TypeError(f"kitti_step.write_results: unknown options {sorted(options)}")
    out = Path(out)
    by_id = {v.video_id: v for v in dataset.videos}
    known = [c.id for c in dataset.categories]
    for pred in predictions:
        where = f"{out} ({FORMAT} results)"
        if pred.video_id not in by_id:
            raise AnnotationFormatError(f"{where}: prediction for unknown video {pred.video_id!r}")
        video = by_id[pred.video_id]
        wanted = video.annotated_frames or list(range(video.num_frames))
        positions = prediction_frames(pred, video, wanted, where)
        maps = prediction_panoptic_maps(pred, where)
        for f, p in zip(wanted, positions):
            sem, inst = maps[p]
            frame_where = f"{where}: video {video.video_id!r} frame {video.frames.names[f]!r}"
            check_panoptic_values(sem, inst, known, frame_where)
            write_rgb_png(
                out / video.video_id / f"{video.frames.names[f]}.png", encode_panoptic(sem, inst, frame_where)
            )
    return out


def read_results(path: Path, dataset: DatasetRecord) -> list[VideoPrediction]:
    """Read ``<path>/<seq>/<frame>.png`` for every sequence of `dataset` into panoptic_maps (semantic,
    instance). A missing sequence folder or a PNG that names no frame of its sequence is an error."""
    path = require_dir(Path(path), "KITTI-STEP results folder")
    cids = tuple(c.id for c in dataset.categories)
    out = []
    for video in dataset.videos:
        folder = require_dir(path / video.video_id, f"results folder of sequence {video.video_id}")
        files = result_pngs(folder, video, f"sequence {video.video_id!r}")
        # things=all ids: a predicted instance on any class is kept as predicted, not rejected
        maps = [read_panoptic_png(f, (video.height, video.width), cids, cids) for f in files]
        out.append(
            VideoPrediction(
                video_id=video.video_id, height=video.height, width=video.width,
                frame_names=[f.stem for f in files], panoptic_maps=maps,
            )
        )  # fmt: skip
    return out
