"""VIPSeg results writer/reader (``pan_pred/<video>/<GT file_name>`` RGB-id PNGs + ``pred.json``).

The official metrics (``eval_vpq_vspw.py``, ``eval_stq_vspw.py``) combine prediction and GT pixel-wise on the
converted GT, which ``change2_720p.py`` resized to height 720 and width ``int(720 * w / h)`` (Python ``int``,
i.e. truncation, not rounding) with nearest-neighbour masks. Results for a raw-layout dataset are therefore
written at that size by default. Used through `vipseg.write_results` / `vipseg.read_results`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from vidseg.data.formats.cityscapes_vps import parse_segments
from vidseg.data.formats.common import load_json, require_key, write_json_atomic
from vidseg.data.formats.vps_common import (
    SegmentIds,
    check_listed_ids,
    check_panoptic_values,
    labels_from_ids,
    prediction_frames,
    prediction_panoptic_maps,
    read_id_png,
    write_id_png,
)
from vidseg.data.records import (
    AnnotationFormatError,
    CorruptMediaError,
    DatasetRecord,
    VideoPrediction,
    VideoRecord,
)

FORMAT = "vipseg"
OFFICIAL_HEIGHT = 720
SIZES = ("720p", "source")


def official_size(height: int, width: int) -> tuple[int, int]:
    """(H, W) of a frame after ``change2_720p.py``: ``resize((int(720*w/h), 720))``."""
    return OFFICIAL_HEIGHT, int(OFFICIAL_HEIGHT * width / height)


def result_size(video: VideoRecord, dataset: DatasetRecord, size: str = "720p") -> tuple[int, int]:
    """(H, W) of the result PNGs: the source size for ``size="source"`` or converted-layout data (already
    the GT the metrics read), else `official_size` of the video's frames."""
    if size not in SIZES:
        raise ValueError(f"vipseg.write_results: size must be one of {SIZES}, got {size!r}")
    if size == "source" or dataset.meta.get("layout") == "converted":
        return video.height, video.width
    return official_size(video.height, video.width)


def resize_nearest(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an integer label map to (H, W), with PIL as ``change2_720p.py`` does."""
    if a.shape == tuple(size):
        return a.astype(np.int32, copy=False)
    im = Image.fromarray(np.ascontiguousarray(a, dtype=np.int32), mode="I")
    return np.asarray(im.resize((size[1], size[0]), Image.NEAREST), dtype=np.int32)


def write_results(
    out: Path,
    predictions: list[VideoPrediction],
    dataset: DatasetRecord,
    *,
    size: Literal["720p", "source"] = "720p",
    **options: Any,
) -> Path:
    """Write ``pan_pred/<video>/<GT file_name>`` and ``pred.json`` (one entry per video in dataset order,
    one segments_info list per annotated frame in GT order, stuff listed first). Every video needs one.

    ``size="720p"`` (default): for raw-layout data each predicted (semantic, instance) map is resized with
    nearest neighbour to H = 720, W = ``int(720 * w / h)`` (the official ``change2_720p.py`` size, that of
    the GT the official metrics read) before the segment ids are assigned; converted-layout data is
    written at its own size. ``size="source"`` writes every video at its frame size."""
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
        target = result_size(video, dataset, size)
        pred = by_id[video.video_id]
        positions = prediction_frames(pred, video, video.annotated_frames, where)
        maps = prediction_panoptic_maps(pred, where)
        seg_ids = SegmentIds()
        frame_entries = []
        for f, p in zip(video.annotated_frames, positions):
            file_name = video.meta["file_names"][f]
            sem, inst = maps[p]
            check_panoptic_values(sem, inst, known, f"{where}: {video.video_id}/{file_name}")
            ids, segments = seg_ids.encode(resize_nearest(sem, target), resize_nearest(inst, target), things)
            write_id_png(out / "pan_pred" / video.video_id / file_name, ids)
            frame_entries.append({"image_id": video.frames.names[f], "file_name": file_name,
                                  "segments_info": segments})  # fmt: skip
        entries.append({"video_id": video.video_id, "annotations": frame_entries})
    write_json_atomic(out / "pred.json", {"annotations": entries})
    return out


def read_results(path: Path, dataset: DatasetRecord) -> list[VideoPrediction]:
    """Read ``pred.json`` + ``pan_pred/`` into panoptic_maps (semantic = segment category, instance =
    segment id for thing categories, 0 for stuff). Frames pair with the GT annotated frames by position.
    A PNG may be at the video's frame size or (raw layout) at the official 720P size; the latter is
    resized back to the frame size with nearest neighbour."""
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
        source = (video.height, video.width)
        sizes = {source, result_size(video, dataset)}
        frames = require_key(entry, "annotations", w, list)
        if len(frames) != len(video.annotated_frames):
            raise AnnotationFormatError(f"{w}: {len(frames)} frames, the GT has {len(video.annotated_frames)}")
        maps = []
        for t, (fr, f) in enumerate(zip(frames, video.annotated_frames)):
            wt = f"{w} annotations[{t}]"
            segments = parse_segments(require_key(fr, "segments_info", wt, list), cat_ids, wt)
            png = folder / "pan_pred" / vid / fr.get("file_name", video.meta["file_names"][f])
            ids = read_id_png(png, None)
            if ids.shape not in sizes:
                expected = " or ".join(f"{h}x{w_}" for h, w_ in sorted(sizes))
                raise CorruptMediaError(
                    f"{png}: PNG size {ids.shape[0]}x{ids.shape[1]} (HxW) does not match {expected} of video {vid!r}"
                )
            check_listed_ids(ids, (s[0] for s in segments), str(png))
            semantic, _ = labels_from_ids(ids, {s[0]: s[1] for s in segments}, {})
            thing_ids = np.array([s[0] for s in segments if s[1] in things], dtype=np.int64)
            instance = np.where(np.isin(ids, thing_ids), ids, 0)
            maps.append((resize_nearest(semantic, source), resize_nearest(instance, source)))
        got[vid] = VideoPrediction(video_id=vid, height=video.height, width=video.width,
                                   frame_names=[video.frames.names[f] for f in video.annotated_frames],
                                   panoptic_maps=maps)  # fmt: skip
    missing = [v for v in videos if v not in got]
    if missing:
        raise AnnotationFormatError(f"{where}: no predictions for videos {missing}")
    return [got[v.video_id] for v in dataset.videos]
