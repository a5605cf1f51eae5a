"""Frame access for every dataset: frame folders (JPEG through simplejpeg, PNG through PIL) and video files
(PyAV or decord).

`open_frames(source)` returns a `FrameReader`; `reader.read(indices)` decodes only the requested frames and
returns uint8 [T, H, W, 3] in the order asked. Readers hold only paths until their first `read`, and reopen
their decoder when used in another process, so they can be pickled into DataLoader workers.

Video files are probed and decoded by `video_files` (re-exported here: `probe_video`, `VideoInfo`,
`PyAVReader`, `DecordReader`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import simplejpeg
from PIL import Image

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
    "FrameSizeError", "read_image_rgb", "source_from_path",
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
# Frame folders (JPEG: simplejpeg; other images: PIL)
# ----------------------------------------------------------------------------------------------------------


def read_image_rgb(path: Path, frame: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Decode one image file to uint8 [H, W, 3]; missing or undecodable files raise errors naming it.

    JPEGs go through simplejpeg (libjpeg-turbo), which writes the pixels once, straight into the array: into `out`
    (a C-contiguous uint8 [H, W, 3], e.g. one frame of a clip) when given, so a clip's frames are never stacked by
    a copy. Per 480p frame it decodes 1.2-1.3x faster than PIL, about as fast as torchvision's decoder
    (`scripts/bench_jpeg.py`), with the same pixels (there and in tests/data/test_video.py). CMYK/YCCK JPEGs, and
    files the JPEG decoder rejects (e.g. a PNG named .jpg), go to PIL, whose error is the one reported; other images
    are copied into `out`. An image of another size than `out` is an error. Images above PIL's
    `Image.MAX_IMAGE_PIXELS` warn and above twice that are refused, on every path (PIL's decompression-bomb rule)."""
    return _read_image(Path(path), frame, out, None)


def _read_image(path: Path, frame: int | None, out: np.ndarray | None, data: np.ndarray | None) -> np.ndarray:
    where = f"{path}" if frame is None else f"{path} (frame {frame})"
    try:
        pixels = None
        if path.suffix.lower() in _JPEG_SUFFIXES:
            pixels = _decode_jpeg_rgb(np.fromfile(path, dtype=np.uint8) if data is None else data, out, where)
        if pixels is None:  # not a JPEG that simplejpeg decodes as PIL would: PIL reads it, and names its error
            with Image.open(path) as im:
                im.load()
                # (converting an image that is RGB already would copy it)
                pixels = np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)
            if out is not None:
                _check_size(pixels.shape[:2], out, where)
                out[...] = pixels
                pixels = out
        return pixels
    except FrameSizeError:
        raise
    except FileNotFoundError as e:
        raise MissingFileError(f"{where}: frame image does not exist") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CorruptMediaError(f"{where}: cannot decode image ({e})") from e


_JPEG_SUFFIXES = (".jpg", ".jpeg")
_PIL_COLOURSPACES = ("CMYK", "YCCK")  # libjpeg-turbo's CMYK -> RGB is not PIL's (nor torchvision's)


class FrameSizeError(CorruptMediaError):
    """An image's size (`size`: height, width) is not the size of the array it is decoded into."""

    def __init__(self, message: str, size: tuple[int, int]) -> None:
        super().__init__(message)
        self.size = size


def _jpeg_header(data: np.ndarray) -> tuple[int, int] | None:
    """(height, width) of a JPEG that simplejpeg decodes as PIL would; None for anything else."""
    try:
        height, width, colourspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    return None if colourspace in _PIL_COLOURSPACES else (height, width)


def _decode_jpeg_rgb(data: np.ndarray, out: np.ndarray | None, where: str) -> np.ndarray | None:
    """The pixels (in `out` when given), or None when PIL should read the file instead."""
    size = _jpeg_header(data)
    if size is None:
        return None
    _check_pixel_count(*size, where)
    if out is not None:
        _check_size(size, out, where)
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out)
    except ValueError:
        return None  # e.g. truncated: PIL names the error


def _check_size(size: tuple[int, int], out: np.ndarray, where: str) -> None:
    if tuple(size) != out.shape[:2]:
        raise FrameSizeError(f"{where}: size {size[0]}x{size[1]}, expected {out.shape[0]}x{out.shape[1]}",
                             (size[0], size[1]))


def _check_pixel_count(height: int, width: int, where: str) -> None:
    """PIL's decompression-bomb rule: warn above `Image.MAX_IMAGE_PIXELS`, refuse above twice that."""
    limit, pixels = Image.MAX_IMAGE_PIXELS, height * width
    if limit is None or pixels <= limit:
        return
    if pixels > 2 * limit:
        raise Image.DecompressionBombError(f"{pixels} pixels exceeds limit of {2 * limit} pixels, could be "
                                           "decompression bomb DOS attack")
    warnings.warn(f"{where}: {pixels} pixels exceeds limit of {limit} pixels, could be decompression bomb DOS "
                  "attack", Image.DecompressionBombWarning, stacklevel=4)


class ImageFolderReader:
    """Frames stored as one image file per frame (JPEG/PNG), decoded by `read_image_rgb` (JPEG: simplejpeg,
    others: PIL) straight into the clip's array."""

    def __init__(self, paths: Sequence[Path], where: Path | str = "frame list") -> None:
        self.paths = [Path(p) for p in paths]
        self.where = where
        if not self.paths:
            raise MissingFileError(f"{where}: no frame images (expected {', '.join(IMAGE_EXTENSIONS)} files)")

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        idx = check_indices(indices, len(self.paths), self.where)
        first_path = self.paths[idx[0]]
        data = size = None
        if first_path.suffix.lower() in _JPEG_SUFFIXES:  # its size from its header: every frame decoded in place
            try:
                data = np.fromfile(first_path, dtype=np.uint8)
            except OSError:
                data = None  # read_image_rgb names the error
            size = None if data is None else _jpeg_header(data)
        if size is None:  # PIL's image (or error): its size known once decoded, one frame copied
            first = _read_image(first_path, idx[0], None, data)
            out = np.empty((len(idx), *first.shape), dtype=np.uint8)
            out[0] = first
        else:
            out = np.empty((len(idx), *size, 3), dtype=np.uint8)
            _read_image(first_path, idx[0], out[0], data)
        at = {idx[0]: 0}
        for k, i in enumerate(idx[1:], start=1):
            if i in at:  # a frame asked for twice is decoded once
                out[k] = out[at[i]]
                continue
            at[i] = k
            try:
                read_image_rgb(self.paths[i], i, out=out[k])
            except FrameSizeError as e:
                raise CorruptMediaError(f"{self.paths[i]} (frame {i}): size {e.size[0]}x{e.size[1]} differs from "
                                        f"{first_path} (frame {idx[0]}): {out.shape[1]}x{out.shape[2]}") from e
        return out

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
