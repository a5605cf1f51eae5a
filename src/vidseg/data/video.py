"""Frame access for every dataset: frame folders (JPEG through torchvision, PNG through PIL) and video files
(PyAV or decord).

`open_frames(source)` returns a `FrameReader`; `reader.read(indices)` decodes only the requested frames and
returns uint8 [T, H, W, 3] in the order asked. Readers hold only paths until their first `read`, and reopen
their decoder when used in another process, so they can be pickled into DataLoader workers.

Video files are probed and decoded by `video_files` (re-exported here: `probe_video`, `VideoInfo`,
`PyAVReader`, `DecordReader`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from vidseg.data.records import CorruptMediaError, FrameSource, MissingFileError
from vidseg.data.video_files import (
    VIDEO_EXTENSIONS,
    DecordReader,
    PyAVReader,
    VideoInfo,
    check_indices,
    check_video_file,
    is_video_file,
    probe_video,
)

__all__ = [
    "BACKENDS", "IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "DecordReader", "FrameReader", "ImageFolderReader",
    "PyAVReader", "VideoInfo", "is_image_file", "is_video_file", "open_frames", "probe_video",
    "read_image_rgb", "source_from_path",
]  # fmt: skip

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
BACKENDS = ("auto", "pyav", "decord", "pil")


@runtime_checkable
class FrameReader(Protocol):
    """Random access to the frames of one video."""

    def __len__(self) -> int: ...

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 [T, H, W, 3] for `indices` (in that order); only these frames are decoded. A fresh array per
        call: training crops are views of it until the collate copies them."""
        ...

    def close(self) -> None: ...


def is_image_file(path: Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


# ----------------------------------------------------------------------------------------------------------
# Frame folders (JPEG: torchvision; other images: PIL)
# ----------------------------------------------------------------------------------------------------------


def read_image_rgb(path: Path, frame: int | None = None) -> np.ndarray:
    """Decode one image file to uint8 [H, W, 3]; missing or undecodable files raise errors naming it.

    JPEGs go through torchvision's libjpeg-turbo decoder, which writes the pixels once, straight into the array
    (PIL packs its 4-byte pixels into bytes in chunks and joins them): 1.17x faster per 480p frame here
    (`scripts/bench_jpeg.py`), with the same pixels (there and in tests/data/test_video.py). A file the JPEG
    decoder rejects (e.g. a PNG named .jpg) goes to PIL, whose error is the one reported."""
    where = f"{path}" if frame is None else f"{path} (frame {frame})"
    try:
        if Path(path).suffix.lower() in _JPEG_SUFFIXES:
            try:
                return _decode_jpeg_rgb(path)
            except RuntimeError:
                pass  # not decodable as a JPEG: let PIL try, and name its error
        with Image.open(path) as im:
            im.load()
            # (converting an image that is RGB already would copy it)
            return np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError as e:
        raise MissingFileError(f"{where}: frame image does not exist") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CorruptMediaError(f"{where}: cannot decode image ({e})") from e


_JPEG_SUFFIXES = (".jpg", ".jpeg")


def _decode_jpeg_rgb(path: Path) -> np.ndarray:
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise RuntimeError("empty file")
    # decode_jpeg fills an [H, W, 3] buffer and returns it viewed as [3, H, W]
    return decode_jpeg(torch.from_numpy(data), mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()


class ImageFolderReader:
    """Frames stored as one image file per frame (JPEG/PNG), decoded by `read_image_rgb` (JPEG: torchvision,
    others: PIL)."""

    def __init__(self, paths: Sequence[Path], where: Path | str = "frame list") -> None:
        self.paths = [Path(p) for p in paths]
        self.where = where
        if not self.paths:
            raise MissingFileError(f"{where}: no frame images (expected {', '.join(IMAGE_EXTENSIONS)} files)")

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        idx = check_indices(indices, len(self.paths), self.where)
        decoded: dict[int, np.ndarray] = {}
        for i in idx:
            if i not in decoded:
                decoded[i] = read_image_rgb(self.paths[i], i)
        first = decoded[idx[0]]
        for i, arr in decoded.items():
            if arr.shape != first.shape:
                raise CorruptMediaError(
                    f"{self.paths[i]} (frame {i}): size {arr.shape[0]}x{arr.shape[1]} differs from "
                    f"{self.paths[idx[0]]} (frame {idx[0]}): {first.shape[0]}x{first.shape[1]}"
                )
        return np.stack([decoded[i] for i in idx])

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------------------------------------
# Video files
# ----------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------


def source_from_path(path: Path) -> FrameSource:
    """FrameSource for a video file or a frame folder (frame names = file stems / '%05d' for videos)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p))
        if not files:
            raise MissingFileError(f"{path}: frame folder contains no images ({', '.join(IMAGE_EXTENSIONS)})")
        return FrameSource(kind="images", paths=files, names=[p.stem for p in files])
    info = probe_video(path)
    return FrameSource(kind="video", video_path=path, names=[f"{i:05d}" for i in range(info.num_frames)])


def open_frames(source: FrameSource | Path | str, backend: str = "auto") -> FrameReader:
    """A lazily opened reader for `source` (a FrameSource, or a path to a video file / frame folder).

    backend: "auto" (PIL for frame folders, PyAV for video files), "pyav", "decord", "pil" (images only).
    Video readers decode on one thread (right for DataLoader workers; for single-process streaming build
    `PyAVReader(path, threads=0)`). "auto" picks PyAV: scripts/bench_decode.py found no consistent speed
    difference between PyAV, decord2 and decord 0.6.0 (480p, 2 shared cores), and PyAV gives exact frame
    counts and truncation checks from its demux index and needs no workaround for decord2's padded rows."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown frame backend {backend!r}; choose one of {BACKENDS}")
    if not isinstance(source, FrameSource):
        source = source_from_path(Path(source))
    if source.kind == "images":
        if backend not in ("auto", "pil"):
            raise ValueError(f"backend {backend!r} reads video files; frame folders use 'pil' (or 'auto')")
        where = source.paths[0].parent if source.paths else "frame source"
        return ImageFolderReader(source.paths, where=where)
    if source.kind != "video" or source.video_path is None:
        raise ValueError(f"FrameSource of kind {source.kind!r} needs video_path set")
    if backend == "pil":
        raise ValueError(f"{source.video_path}: backend 'pil' reads frame folders, not video files")
    path = check_video_file(source.video_path)
    num_frames = len(source) if len(source) else None
    if backend == "decord":
        return DecordReader(path, num_frames, threads=1)
    return PyAVReader(path, num_frames, threads=1)
