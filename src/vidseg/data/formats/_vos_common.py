"""Helpers shared by the ytvis / davis / ytvos / burst readers and writers.

Indexed-PNG decoding (DAVIS and YouTube-VOS label maps), indexed-PNG result folders, JPEG frame writing,
ground-truth input checks and uncompressed COCO RLE (the released YouTube-VIS encoding).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from vidseg.data.formats.common import (
    davis_palette,
    encode_rle,
    image_header_size,
    read_png,
    require_dir,
    sorted_frame_files,
    write_index_png,
)
from vidseg.data.records import (
    RLE,
    AnnotationFormatError,
    CorruptMediaError,
    DatasetRecord,
    FrameLabels,
    GroundTruthVideo,
    MissingFileError,
    TrackPrediction,
    VideoPrediction,
    VideoRecord,
)

JPEG_QUALITY = 95
VOID_VALUE = 255


# ------------------------------------------------------------------------------------------------ frames


def save_jpeg(path: Path, rgb: np.ndarray, quality: int = JPEG_QUALITY) -> Path:
    """Write one uint8 [H, W, 3] frame as JPEG (the datasets ship JPEG frames)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB").save(path, quality=quality)
    return path


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file from its header only (no pixel decoding)."""
    if not Path(path).is_file():
        raise MissingFileError(f"{path}: required frame file does not exist")
    return image_header_size(path)


def jpeg_frames(frames_dir: Path, what: str, listed_in: Path) -> tuple[list[Path], list[str]]:
    """(sorted JPEG frame files, their stems) of one video folder, which must hold some; `what` names the
    video in errors (e.g. "sequence 'bear'"), `listed_in` is the file that lists it."""
    if not frames_dir.is_dir():
        raise MissingFileError(f"{frames_dir}: frame folder of {what} (listed in {listed_in}) is missing")
    frame_files = sorted_frame_files(frames_dir, (".jpg", ".jpeg"))
    if not frame_files:
        raise MissingFileError(f"{frames_dir}: {what} has no JPEG frames")
    return frame_files, [p.stem for p in frame_files]


def annotation_pngs(ann_dir: Path, what: str, listed_in: Path) -> list[Path]:
    """Sorted `*.png` files of one video's annotation folder (which must exist); `what` as in jpeg_frames."""
    if not ann_dir.is_dir():
        raise MissingFileError(f"{ann_dir}: annotation folder of {what} (listed in {listed_in}) is missing")
    return sorted(p for p in ann_dir.iterdir() if p.suffix.lower() == ".png")


def png_frame(png: Path, index: dict[str, int], frames_dir: Path) -> int:
    """Frame index of an annotation PNG (by stem); a PNG naming no frame is an error."""
    if png.stem not in index:
        raise AnnotationFormatError(f"{png}: annotation of frame {png.stem!r}, which has no JPEG in {frames_dir}")
    return index[png.stem]


def check_png_header(path: Path, size: tuple[int, int]) -> None:
    """Cheap check of an indexed PNG (header only): single-channel 8-bit mode and the video's (H, W)."""
    if not Path(path).is_file():
        raise MissingFileError(f"{path}: required annotation PNG does not exist")
    try:
        with Image.open(path) as im:
            mode, (w, h), fmt = im.mode, im.size, im.format
    except (OSError, SyntaxError, ValueError) as e:
        raise CorruptMediaError(f"{path}: cannot decode PNG ({e})") from e
    if fmt != "PNG":
        raise CorruptMediaError(f"{path}: not a PNG file (format {fmt})")
    if mode not in ("P", "L"):
        raise CorruptMediaError(f"{path}: expected an indexed (palette 'P' or grayscale 'L') PNG, got mode {mode}")
    if (h, w) != tuple(size):
        raise CorruptMediaError(f"{path}: PNG size {h}x{w} (HxW) does not match the video's {size[0]}x{size[1]}")


def read_index_png(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Decode an indexed PNG as stored: uint8 [H, W]; RGB, 16-bit or wrong-size files are errors."""
    check_png_header(path, size)
    arr = read_png(path, channels=1, size=size)
    if arr.dtype != np.uint8:
        raise CorruptMediaError(f"{path}: expected 8-bit label values, got dtype {arr.dtype}")
    return arr


def object_ids(arr: np.ndarray) -> list[int]:
    """Object ids present in a label map (0 and void excluded), ascending."""
    present = np.flatnonzero(np.bincount(arr.ravel(), minlength=256))
    return [int(k) for k in present if k not in (0, VOID_VALUE)]


@dataclass(frozen=True)
class IndexPngDecoder:
    """LabelMapDecoder of DAVIS / YouTube-VOS annotation PNGs (picklable for DataLoader workers).

    Value k > 0 = object k, 0 = background, 255 = void when `void` is set. `max_id` (DAVIS N) and `allowed`
    (YouTube-VOS object ids of the video) turn unexpected ids into errors naming the file. `claimed` (PNG file
    name -> object ids an annotation file says it holds, e.g. YouTube-VOS meta.json, read without decoding the
    PNGs): a claimed object the PNG does not hold is an error naming both.
    """

    height: int
    width: int
    max_id: int | None = None
    allowed: frozenset[int] | None = None
    void: bool = True
    claimed: dict[str, frozenset[int]] | None = field(default=None, hash=False, compare=False)
    claimed_by: str = "the annotation file"

    def __call__(self, path: Path) -> FrameLabels:
        arr = read_index_png(path, (self.height, self.width))
        ids = object_ids(arr)
        if not self.void and (arr == VOID_VALUE).any():
            ids.append(VOID_VALUE)
        check_ids(path, ids, self.max_id, self.allowed)
        if self.claimed is not None:
            absent = sorted(self.claimed.get(Path(path).name, frozenset()) - set(ids))
            if absent:
                raise AnnotationFormatError(f"{path}: {self.claimed_by} lists object {absent[0]} in this frame, but "
                                            "the PNG does not hold it")
        masks = {k: arr == k for k in ids}
        void = (arr == VOID_VALUE) if self.void else None
        return FrameLabels(masks=masks, semantic=None, void=void)


def check_ids(path: Path, ids: list[int], max_id: int | None, allowed: frozenset[int] | None) -> None:
    """Raise AnnotationFormatError naming `path` for an id above `max_id` or outside `allowed`."""
    if max_id is not None:
        above = [k for k in ids if k > max_id]
        if above:
            raise AnnotationFormatError(
                f"{path}: object id {above[0]} is above the number of objects N={max_id} "
                "(N = max id of the first annotation frame)"
            )
    if allowed is not None:
        unknown = [k for k in ids if k not in allowed]
        if unknown:
            raise AnnotationFormatError(
                f"{path}: object id {unknown[0]} is not an object of this video (known: {sorted(allowed)})"
            )


# ------------------------------------------------------------------------------------------ ground truth


def check_gt_video(video: GroundTruthVideo, categories: set[int] | None = None) -> list[int]:
    """Validate a GroundTruthVideo before writing; return its track ids (ascending)."""
    where = f"GroundTruthVideo {video.video_id!r}"
    n = len(video.frames)
    if n == 0:
        raise ValueError(f"{where}: no frames")
    if len(video.instance_maps) != n:
        raise ValueError(f"{where}: {len(video.instance_maps)} instance maps for {n} frames")
    h, w = video.height, video.width
    for t, (frame, imap) in enumerate(zip(video.frames, video.instance_maps)):
        if frame.shape != (h, w, 3) or frame.dtype != np.uint8:
            raise ValueError(f"{where}: frame {t} must be uint8 [{h}, {w}, 3], got {frame.dtype} {frame.shape}")
        if imap.shape != (h, w):
            raise ValueError(f"{where}: instance map {t} has shape {imap.shape}, expected ({h}, {w})")
    ids = sorted({int(k) for imap in video.instance_maps for k in np.unique(imap) if k != 0})
    if ids and ids[0] < 0:
        raise ValueError(f"{where}: negative track id {ids[0]}")
    missing = [k for k in ids if k not in video.track_categories]
    if categories is not None and missing:
        raise ValueError(f"{where}: track {missing[0]} has no entry in track_categories")
    if categories is not None:
        for k in ids:
            if video.track_categories[k] not in categories:
                raise ValueError(f"{where}: track {k} has category {video.track_categories[k]} not in categories")
    return ids


def first_appearance(video: GroundTruthVideo, ids: list[int]) -> dict[int, int]:
    """Track id -> first frame where its mask is non-empty."""
    first: dict[int, int] = {}
    for t, imap in enumerate(video.instance_maps):
        for k in np.unique(imap):
            first.setdefault(int(k), t)
    return {k: first[k] for k in ids}


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """bool [H, W] -> uncompressed COCO RLE (column-major runs, zeros first), as released by YouTube-VIS."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def normalise_rle(rle: RLE, size: tuple[int, int], where: str) -> RLE:
    """A prediction RLE as JSON-ready compressed RLE; its size must be the video's."""
    if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
        raise ValueError(f"{where}: mask must be a compressed RLE dict with 'size' and 'counts'")
    if [int(rle["size"][0]), int(rle["size"][1])] != list(size):
        raise ValueError(f"{where}: RLE size {list(rle['size'])} does not match the video size {list(size)}")
    counts = rle["counts"]
    if isinstance(counts, list):
        return encode_rle(mask_utils.decode(mask_utils.frPyObjects(rle, *size)).astype(bool))
    return {"size": list(size), "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


# ------------------------------------------------------------------------------- indexed-PNG results


def video_lookup(dataset_videos: list[VideoRecord]) -> dict[str, VideoRecord]:
    return {v.video_id: v for v in dataset_videos}


def write_index_result_folders(
    folder: Path,
    predictions: list[VideoPrediction],
    dataset: DatasetRecord,
    noun: str,
    allowed: Callable[[VideoRecord], set[int]],
) -> None:
    """write_index_results into `<folder>/<video_id>` for every prediction; a prediction for a video that is
    not in `dataset` is an error calling it "not a <noun> of <name>/<split>"."""
    videos = video_lookup(dataset.videos)
    for pred in predictions:
        if pred.video_id not in videos:
            raise ValueError(f"prediction for video {pred.video_id!r}: not a {noun} of {dataset.name}/{dataset.split}")
        video = videos[pred.video_id]
        write_index_results(folder / video.video_id, pred, video, allowed(video))


def write_index_results(folder: Path, pred: VideoPrediction, video: VideoRecord, allowed: set[int]) -> None:
    """Write `<folder>/<frame>.png` for every frame of `video` from `pred.instance_map(t)` (palette PNG)."""
    where = f"prediction for video {pred.video_id!r}"
    if (pred.height, pred.width) != (video.height, video.width):
        raise ValueError(f"{where}: size {pred.height}x{pred.width} != video {video.height}x{video.width}")
    for trk in pred.tracks:
        if trk.track_id not in allowed:
            raise ValueError(
                f"{where}: track id {trk.track_id} is not an object of the video (allowed {sorted(allowed)})"
            )
        if len(trk.masks) != video.num_frames:
            raise ValueError(f"{where}: track {trk.track_id} has {len(trk.masks)} masks for {video.num_frames} frames")
    palette = davis_palette()
    for t, name in enumerate(video.frames.names):
        write_index_png(Path(folder) / f"{name}.png", pred.instance_map(t), palette)


def read_index_results(folder: Path, video: VideoRecord, allowed: set[int]) -> VideoPrediction:
    """Read `<folder>/<frame>.png` for every frame; one TrackPrediction (score 1) per object id present."""
    require_dir(folder, f"result folder of video {video.video_id!r}")
    size = (video.height, video.width)
    maps = []
    for name in video.frames.names:
        path = Path(folder) / f"{name}.png"
        if not path.is_file():
            raise MissingFileError(f"{path}: result PNG of frame {name!r} of video {video.video_id!r} is missing")
        arr = read_index_png(path, size)
        check_ids(path, [k for k in np.unique(arr).tolist() if k != 0], None, frozenset(allowed))
        maps.append(arr)
    present = sorted({k for arr in maps for k in object_ids(arr)})
    tracks = [
        TrackPrediction(
            track_id=k,
            category_id=None,
            score=1.0,
            masks=[encode_rle(arr == k) if (arr == k).any() else None for arr in maps],
        )
        for k in present
    ]
    return VideoPrediction(
        video_id=video.video_id,
        height=video.height,
        width=video.width,
        frame_names=list(video.frames.names),
        tracks=tracks,
    )
