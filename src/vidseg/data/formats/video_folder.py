"""Format "video": unannotated videos, either video files (mp4/avi/mov/mkv) or frame folders (JPEG/PNG).

`read(root)` accepts a video file, a frame folder, or a folder holding several of them (a frame folder is a
folder whose entries include images). Nothing is decoded: sizes and frame counts come from the container
(`probe_video`) or from the first image's header.

`write_ground_truth` writes each GroundTruthVideo as `<root>/<split>/<video_id>.mp4` (the "mp4" output of
the synthetic generator). The format has no annotations, hence no result files.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from vidseg.data.formats.common import image_header_size
from vidseg.data.records import (
    AnnotationFormatError,
    Category,
    DatasetRecord,
    FrameSource,
    GroundTruthVideo,
    MissingFileError,
    VideoPrediction,
    VideoRecord,
)
from vidseg.data.video import IMAGE_EXTENSIONS, is_image_file, is_video_file, probe_video

FORMAT = "video"


def _frame_folder_record(folder: Path, fps: float | None) -> VideoRecord:
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))
    if not files:
        raise MissingFileError(f"{folder}: frame folder contains no images ({', '.join(IMAGE_EXTENSIONS)})")
    height, width = image_header_size(files[0])
    return VideoRecord(
        video_id=folder.name,
        frames=FrameSource(kind="images", paths=files, names=[p.stem for p in files]),
        height=height,
        width=width,
        fps=fps,
        meta={"source": str(folder)},
    )


def _video_file_record(path: Path) -> VideoRecord:
    info = probe_video(path)
    return VideoRecord(
        video_id=path.stem,
        frames=FrameSource(kind="video", video_path=path, names=[f"{i:05d}" for i in range(info.num_frames)]),
        height=info.height,
        width=info.width,
        fps=info.fps,
        meta={"source": str(path)},
    )


def _is_frame_folder(folder: Path) -> bool:
    return any(p.is_file() and is_image_file(p) for p in folder.iterdir())


def read(root: Path, split: str | None = None, fps: float | None = None, **options: Any) -> DatasetRecord:
    """Unannotated VideoRecords for a video file, a frame folder, or a folder of them.

    split: when given, videos are read from `<root>/<split>` (the layout `write_ground_truth` produces).
    fps: frame rate to record for frame folders (video files report their own)."""
    if options:
        raise TypeError(f"video format: unknown options {sorted(options)}")
    root = Path(root)
    base = root / split if split else root
    if not base.exists():
        raise MissingFileError(f"{base}: video file or folder does not exist")
    videos: list[VideoRecord]
    if base.is_file():
        videos = [_video_file_record(base)]
    elif _is_frame_folder(base):
        videos = [_frame_folder_record(base, fps)]
    else:
        videos = []
        for entry in sorted(base.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_file() and is_video_file(entry):
                videos.append(_video_file_record(entry))
            elif entry.is_dir() and _is_frame_folder(entry):
                videos.append(_frame_folder_record(entry, fps))
        if not videos:
            raise MissingFileError(
                f"{base}: no video files or frame folders found (videos: .mp4/.avi/.mov/.mkv; "
                f"frames: {', '.join(IMAGE_EXTENSIONS)})"
            )
    ids = [v.video_id for v in videos]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise AnnotationFormatError(f"{base}: several videos share the id(s) {dupes} (e.g. a.mp4 and a/)")
    return DatasetRecord(name=FORMAT, format=FORMAT, split=split or "", root=root, categories=[], videos=videos)


def write_mp4(path: Path, frames: Sequence[np.ndarray], fps: float, codec: str = "libx264", crf: int = 12) -> Path:
    """Encode uint8 [H, W, 3] frames as an mp4 (atomic: temp file + rename). libx264 runs single-threaded
    so the bytes are reproducible; odd sizes use yuv444p (yuv420p needs even H and W)."""
    import av

    path = Path(path)
    if not frames:
        raise ValueError(f"{path}: no frames to write")
    height, width = frames[0].shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    even = height % 2 == 0 and width % 2 == 0
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv420p" if even or codec != "libx264" else "yuv444p"
            if codec == "libx264":
                stream.options = {"crf": str(crf), "preset": "medium", "threads": "1"}
            else:
                stream.codec_context.thread_count = 1
                stream.bit_rate = 20_000_000
            for t, rgb in enumerate(frames):
                if rgb.shape != (height, width, 3) or rgb.dtype != np.uint8:
                    raise ValueError(
                        f"{path}: frame {t} is {rgb.dtype} {rgb.shape}, expected uint8 {(height, width, 3)}"
                    )
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_ground_truth(
    root: Path,
    split: str,
    videos: Sequence[GroundTruthVideo],
    categories: Sequence[Category] = (),
    codec: str = "libx264",
    **options: Any,
) -> Path:
    """Write each video's frames as `<root>/<split>/<video_id>.mp4` at the video's fps (labels are dropped:
    this format is unannotated). Returns the split folder."""
    if options:
        raise TypeError(f"video format: unknown options {sorted(options)}")
    out = Path(root) / split
    for video in videos:
        write_mp4(out / f"{video.video_id}.mp4", video.frames, video.fps, codec=codec)
    return out


def write_results(out: Path, predictions: list[VideoPrediction], dataset: DatasetRecord, **options: Any) -> Path:
    """Unannotated videos have no official result format."""
    raise AnnotationFormatError(
        f"{out}: format 'video' is unannotated and has no result format; write predictions with the task's "
        "writer for an annotated format, or save masks/overlays with vidseg.predict"
    )


def read_results(path: Path, dataset: DatasetRecord) -> list[VideoPrediction]:
    """Unannotated videos have no official result format."""
    raise AnnotationFormatError(f"{path}: format 'video' is unannotated and has no result format to read")
