"""Helpers shared by the label-map formats (KITTI-STEP, Cityscapes-VPS, VIPSeg, VSPW).

Ground-truth checks (a `GroundTruthVideo` must be self-consistent before a writer encodes it), conversion
of a `VideoPrediction` into per-frame (semantic, instance) maps, the per-video assignment of panoptic
segment ids, PNG-id/segments_info consistency checks, and frame image I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vidseg.data.formats.common import (
    id_to_rgb,
    image_header_size,
    read_name_list,
    read_png,
    require_dir,
    require_file,
    require_key,
    sorted_frame_files,
)
from vidseg.data.records import (
    IGNORE_LABEL,
    AnnotationFormatError,
    Category,
    FrameAnnotation,
    FrameLabels,
    FrameSource,
    GroundTruthVideo,
    MissingFileError,
    TrackInfo,
    VideoPrediction,
    VideoRecord,
)

CITYSCAPES_CLASSES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("road", (128, 64, 128)),
    ("sidewalk", (244, 35, 232)),
    ("building", (70, 70, 70)),
    ("wall", (102, 102, 156)),
    ("fence", (190, 153, 153)),
    ("pole", (153, 153, 153)),
    ("traffic light", (250, 170, 30)),
    ("traffic sign", (220, 220, 0)),
    ("vegetation", (107, 142, 35)),
    ("terrain", (152, 251, 152)),
    ("sky", (70, 130, 180)),
    ("person", (220, 20, 60)),
    ("rider", (255, 0, 0)),
    ("car", (0, 0, 142)),
    ("truck", (0, 0, 70)),
    ("bus", (0, 60, 100)),
    ("train", (0, 80, 100)),
    ("motorcycle", (0, 0, 230)),
    ("bicycle", (119, 11, 32)),
)
"""The 19 Cityscapes train ids 0..18 with their official colours."""

MAX_SEGMENT_ID = 256**3 - 1  # largest id an RGB panoptic PNG can hold


def cityscapes_categories(things: Iterable[int]) -> list[Category]:
    """The 19 Cityscapes train-id categories; `things` says which carry instances in this dataset."""
    thing_set = set(things)
    return [
        Category(id=i, name=name, isthing=i in thing_set, color=color)
        for i, (name, color) in enumerate(CITYSCAPES_CLASSES)
    ]


# ----------------------------------------------------------------------------------------------------------
# frames
# ----------------------------------------------------------------------------------------------------------


def category_from_json(entry: Any, where: str, color_of: Callable[[Any], tuple[int, ...] | None]) -> Category:
    """Category of one JSON vocabulary entry: required `id` (int), `name` (str), `isthing` (bool or 0/1);
    the optional raw `color` goes through the format's `color_of`."""
    return Category(
        id=require_key(entry, "id", where, int),
        name=require_key(entry, "name", where, str),
        isthing=bool(require_key(entry, "isthing", where, (bool, int))),
        color=color_of(entry.get("color")),
    )


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file from its header (no pixel decoding)."""
    return image_header_size(require_file(path, "frame image"))


def frames_of_video(frames_dir: Path, empty: str) -> tuple[FrameSource, dict[str, int], tuple[int, int]]:
    """(image FrameSource of the sorted frame files, frame index by stem, (H, W) of the first frame) of one
    video folder; a folder without frames is a MissingFileError "<frames_dir>: <empty>" (e.g. "video without
    frames")."""
    frames = sorted_frame_files(frames_dir)
    if not frames:
        raise MissingFileError(f"{frames_dir}: {empty}")
    size = image_size(frames[0])
    names = [p.stem for p in frames]
    return FrameSource(kind="images", paths=frames, names=names), {n: i for i, n in enumerate(names)}, size


def result_pngs(folder: Path, video: VideoRecord, what: str) -> list[Path]:
    """The PNGs of one video's result folder in frame order; a PNG whose stem is no frame of the video is an
    AnnotationFormatError "<png>: not a frame of <what>"."""
    index = {name: i for i, name in enumerate(video.frames.names)}
    files = sorted_frame_files(folder, (".png",))
    for f in files:
        if f.stem not in index:
            raise AnnotationFormatError(f"{f}: not a frame of {what}")
    return sorted(files, key=lambda f: index[f.stem])


def label_files(
    label_dir: Path, required: str | None, index: dict[str, int], what: str, frames_dir: Path, frame_suffix: str
) -> list[Path]:
    """Sorted label PNGs of one video: none when `label_dir` is absent, unless `required` (then it names
    the folder in the MissingFileError). A PNG whose stem is no frame in `index` is a MissingFileError
    "<png>: <what> without a frame <frames_dir>/<stem><frame_suffix>". These datasets label every frame, so a
    video with labels for some frames but not all is a MissingFileError naming the first missing PNG."""
    if required is not None:
        require_dir(label_dir, required)
    files = sorted_frame_files(label_dir, (".png",)) if label_dir.is_dir() else []
    for f in files:
        if f.stem not in index:
            raise MissingFileError(f"{f}: {what} without a frame {frames_dir / f.stem}{frame_suffix}")
    if files and len(files) < len(index):
        labelled = {f.stem for f in files}
        missing = min((i, stem) for stem, i in index.items() if stem not in labelled)[1]
        raise MissingFileError(f"{label_dir / missing}.png: {what} of frame {frames_dir / missing}{frame_suffix} "
                               f"does not exist ({len(files)} of the video's {len(index)} frames have one)")
    return files


def scanned_annotations(
    files: list[Path],
    scans: Iterable[list[int]],
    index: dict[str, int],
    decoder: Callable[[Path], FrameLabels],
    category_of: Callable[[int], int],
) -> tuple[dict[int, TrackInfo], list[FrameAnnotation]]:
    """Tracks (by id, ascending; category from `category_of(track id)`) and frame annotations (by frame) of
    one video whose label files were decoded at read time into `scans` (the track ids of each file)."""
    tracks: dict[int, TrackInfo] = {}
    annotations = []
    for f, tids in zip(files, scans):
        for t in tids:
            tracks.setdefault(t, TrackInfo(track_id=t, category_id=category_of(t)))
        annotations.append(
            FrameAnnotation(frame=index[f.stem], label_map=f, decoder=decoder, track_ids=frozenset(tids))
        )
    annotations.sort(key=lambda a: a.frame)
    return dict(sorted(tracks.items())), annotations


def write_frame(path: Path, frame: np.ndarray, jpeg_quality: int = 95) -> Path:
    """Write an RGB uint8 frame; the suffix picks the codec (.png lossless, .jpg with `jpeg_quality`)."""
    path = Path(path)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise AnnotationFormatError(f"{path}: frames must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(frame, mode="RGB")
    if path.suffix.lower() in (".jpg", ".jpeg"):
        im.save(path, quality=jpeg_quality)
    else:
        im.save(path)
    return path


def check_name(name: str, where: str, field: str = "video_id") -> str:
    """A video/frame name usable as one path component."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
        raise AnnotationFormatError(f"{where}: {field} {name!r} is not a valid folder/file name")
    return name


def read_split_list(path: Path) -> list[str]:
    """Video names of a split list file (one per line, blank lines ignored, duplicates rejected)."""
    return read_name_list(path, "split list", "video")


def frame_index_by_stem(video: VideoRecord) -> dict[str, int]:
    return {name: i for i, name in enumerate(video.frames.names)}


# ----------------------------------------------------------------------------------------------------------
# ground truth
# ----------------------------------------------------------------------------------------------------------


def check_ground_truth(video: GroundTruthVideo, categories: Sequence[Category], where: str) -> None:
    """Validate a GroundTruthVideo against a vocabulary: sizes, known class ids, thing-class tracks and
    track pixels carrying their track's class. Raises AnnotationFormatError naming video and frame."""
    where = f"{where}: video {video.video_id!r}"
    n = len(video.frames)
    if n == 0:
        raise AnnotationFormatError(f"{where}: no frames")
    if len(video.instance_maps) != n or len(video.semantic_maps) != n:
        raise AnnotationFormatError(
            f"{where}: {n} frames but {len(video.instance_maps)} instance maps and "
            f"{len(video.semantic_maps)} semantic maps"
        )
    cat_by_id = {c.id: c for c in categories}
    for tid, cid in video.track_categories.items():
        if not isinstance(tid, int | np.integer) or tid <= 0:
            raise AnnotationFormatError(f"{where}: track id {tid!r} must be a positive int")
        if cid not in cat_by_id:
            raise AnnotationFormatError(f"{where}: track {tid} has unknown category id {cid}")
        if not cat_by_id[cid].isthing:
            raise AnnotationFormatError(f"{where}: track {tid} has stuff category {cid} ({cat_by_id[cid].name})")
    known = np.array(sorted(cat_by_id) + [IGNORE_LABEL], dtype=np.int64)
    h, w = video.height, video.width
    for t in range(n):
        frame, inst, sem = video.frames[t], video.instance_maps[t], video.semantic_maps[t]
        if frame.shape[:2] != (h, w) or inst.shape != (h, w) or sem.shape != (h, w):
            raise AnnotationFormatError(
                f"{where} frame {t}: shapes frame {frame.shape}, instance {inst.shape}, semantic {sem.shape} "
                f"differ from {h}x{w}"
            )
        bad = ~np.isin(sem, known)
        if bad.any():
            raise AnnotationFormatError(f"{where} frame {t}: unknown semantic id {int(sem[bad][0])}")
        for tid in np.unique(inst[inst != 0]).tolist():
            if tid not in video.track_categories:
                raise AnnotationFormatError(f"{where} frame {t}: instance map holds track {tid} with no category")
            classes = np.unique(sem[inst == tid])
            if classes.tolist() != [video.track_categories[tid]]:
                raise AnnotationFormatError(
                    f"{where} frame {t}: track {tid} (category {video.track_categories[tid]}) covers "
                    f"semantic ids {classes.tolist()}"
                )


# ----------------------------------------------------------------------------------------------------------
# predictions
# ----------------------------------------------------------------------------------------------------------


def prediction_panoptic_maps(pred: VideoPrediction, where: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per frame (semantic int32, instance int32) of a panoptic prediction: `panoptic_maps` as given, or
    built from `tracks` (instance = track id, semantic = track category) pasted over `semantic_maps`."""
    where = f"{where}: prediction for video {pred.video_id!r}"
    n, size = len(pred.frame_names), (pred.height, pred.width)
    if pred.panoptic_maps is not None:
        if len(pred.panoptic_maps) != n:
            raise AnnotationFormatError(f"{where}: {len(pred.panoptic_maps)} panoptic maps for {n} frame names")
        out = []
        for t, (sem, inst) in enumerate(pred.panoptic_maps):
            if sem.shape != size or inst.shape != size:
                raise AnnotationFormatError(
                    f"{where} frame {t}: panoptic map shapes {sem.shape}/{inst.shape} != {size}"
                )
            out.append((np.asarray(sem, dtype=np.int32), np.asarray(inst, dtype=np.int32)))
        return out
    if pred.semantic_maps is None:
        raise AnnotationFormatError(f"{where}: a panoptic prediction needs panoptic_maps or semantic_maps")
    if len(pred.semantic_maps) != n:
        raise AnnotationFormatError(f"{where}: {len(pred.semantic_maps)} semantic maps for {n} frame names")
    track_class = {}
    for trk in pred.tracks:
        if trk.category_id is None:
            raise AnnotationFormatError(f"{where}: track {trk.track_id} has no category_id")
        if trk.track_id <= 0:
            raise AnnotationFormatError(f"{where}: track id {trk.track_id} must be positive")
        if len(trk.masks) != n:
            raise AnnotationFormatError(f"{where}: track {trk.track_id} has {len(trk.masks)} masks for {n} frames")
        track_class[trk.track_id] = trk.category_id
    out = []
    for t in range(n):
        sem = np.array(pred.semantic_maps[t], dtype=np.int32)
        if sem.shape != size:
            raise AnnotationFormatError(f"{where} frame {t}: semantic map shape {sem.shape} != {size}")
        inst = pred.instance_map(t) if pred.tracks else np.zeros(size, dtype=np.int32)
        for tid in np.unique(inst[inst > 0]).tolist():
            sem[inst == tid] = track_class[tid]
        out.append((sem, inst))
    return out


def prediction_frames(pred: VideoPrediction, video: VideoRecord, wanted: Sequence[int], where: str) -> list[int]:
    """Positions in `pred.frame_names` of the video frames `wanted` (indices into video.frames)."""
    pos = {name: i for i, name in enumerate(pred.frame_names)}
    if (pred.height, pred.width) != (video.height, video.width):
        raise AnnotationFormatError(
            f"{where}: prediction for {video.video_id!r} is {pred.height}x{pred.width}, "
            f"the video is {video.height}x{video.width}"
        )
    out = []
    for f in wanted:
        name = video.frames.names[f]
        if name not in pos:
            raise AnnotationFormatError(f"{where}: prediction for {video.video_id!r} lacks frame {name!r}")
        out.append(pos[name])
    return out


class SegmentIds:
    """Assigns one panoptic segment id per (semantic, instance) pair of a video, dense from 1 in order of
    first appearance, so the same pair keeps its id in every frame (tube identity, constant stuff ids)."""

    def __init__(self) -> None:
        self.ids: dict[tuple[int, int], int] = {}

    def encode(self, sem: np.ndarray, inst: np.ndarray, things: set[int]) -> tuple[np.ndarray, list[dict]]:
        """Id map (0 = void where semantic is IGNORE_LABEL) and segments_info [{id, category_id}] of one
        frame, stuff segments first (the VIPSeg STQ script gives the first-listed segment instance 0)."""
        key = (sem.astype(np.int64) << 32) | inst.astype(np.int64)
        uniq, inverse = np.unique(key, return_inverse=True)
        seg_of_key = np.zeros(len(uniq), dtype=np.int64)
        segments = []
        for k, value in enumerate(uniq.tolist()):
            cls, ins = value >> 32, value & 0xFFFFFFFF
            if cls == IGNORE_LABEL:
                continue
            sid = self.ids.setdefault((cls, ins), len(self.ids) + 1)
            if sid > MAX_SEGMENT_ID:
                raise AnnotationFormatError(f"more than {MAX_SEGMENT_ID} segments in one video")
            seg_of_key[k] = sid
            segments.append({"id": sid, "category_id": int(cls)})
        segments.sort(key=lambda s: (s["category_id"] in things, s["id"]))
        return seg_of_key[inverse.reshape(sem.shape)], segments


def write_id_png(path: Path, ids: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(id_to_rgb(ids), mode="RGB").save(path)
    return path


def read_id_png(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """Panoptic ids (int64) of an RGB id PNG; errors name the file."""
    rgb = read_png(path, channels=3, size=size).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def check_listed_ids(ids: np.ndarray, listed: Iterable[int], where: str) -> tuple[np.ndarray, np.ndarray]:
    """Every non-zero id of the PNG is listed and every listed id occurs. Returns (unique ids, counts)."""
    uniq, counts = np.unique(ids, return_counts=True)
    present = {int(u) for u in uniq.tolist() if u != 0}
    listed_set = set(listed)
    extra = sorted(present - listed_set)
    if extra:
        raise AnnotationFormatError(f"{where}: PNG segment id {extra[0]} is not in segments_info")
    missing = sorted(listed_set - present)
    if missing:
        raise AnnotationFormatError(f"{where}: segments_info id {missing[0]} does not occur in the PNG")
    return uniq, counts


def labels_from_ids(
    ids: np.ndarray, seg_class: dict[int, int], track_of_seg: dict[int, int]
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Semantic map (IGNORE_LABEL where id 0) and thing-track masks from a checked id map."""
    uniq, inverse = np.unique(ids, return_inverse=True)
    inverse = inverse.reshape(ids.shape)
    lut = np.array([seg_class.get(int(u), IGNORE_LABEL) for u in uniq.tolist()], dtype=np.int32)
    semantic = lut[inverse]
    masks = {track_of_seg[int(u)]: inverse == k for k, u in enumerate(uniq.tolist()) if int(u) in track_of_seg}
    return semantic, masks


def check_panoptic_values(
    sem: np.ndarray, inst: np.ndarray, known: Iterable[int], where: str, *, allow_void: bool = True
) -> None:
    """Predicted semantic ids must be vocabulary ids (or IGNORE_LABEL if allowed); instances >= 0."""
    allowed = np.array(sorted(set(known) | ({IGNORE_LABEL} if allow_void else set())), dtype=np.int64)
    bad = ~np.isin(sem, allowed)
    if bad.any():
        raise AnnotationFormatError(f"{where}: predicted semantic id {int(sem[bad][0])} is not a category id")
    if (inst < 0).any():
        raise AnnotationFormatError(f"{where}: negative instance id {int(inst.min())}")
