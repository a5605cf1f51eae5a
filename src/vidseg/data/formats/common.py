"""Helpers shared by the format readers/writers: validated JSON and PNG I/O, RLE conversion, atomic writes."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from vidseg.data.records import RLE, AnnotationFormatError, CorruptMediaError, MissingFileError


def require_file(path: Path, what: str = "file") -> Path:
    """Return `path` if it is an existing file, else raise MissingFileError naming it."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: required {what} does not exist")
    return path


def require_dir(path: Path, what: str = "folder") -> Path:
    path = Path(path)
    if not path.is_dir():
        raise MissingFileError(f"{path}: required {what} does not exist")
    return path


def load_json(path: Path) -> Any:
    """Parse a JSON file; missing, empty, truncated or invalid files raise errors naming the file."""
    path = require_file(path, "JSON file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationFormatError(f"{path}: invalid or truncated JSON ({e.msg} at line {e.lineno})") from e
    except UnicodeDecodeError as e:
        raise AnnotationFormatError(f"{path}: not UTF-8 text JSON ({e})") from e


def require_key(obj: Any, key: str, where: str, types: type | tuple[type, ...] | None = None) -> Any:
    """obj[key] with a clear error naming `where` (file + context) and the field."""
    if not isinstance(obj, dict):
        raise AnnotationFormatError(f"{where}: expected an object with field '{key}', got {type(obj).__name__}")
    if key not in obj:
        raise AnnotationFormatError(f"{where}: missing field '{key}'")
    value = obj[key]
    if types is not None and not isinstance(value, types):
        names = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise AnnotationFormatError(f"{where}: field '{key}' must be {names}, got {type(value).__name__}")
    return value


def write_json_atomic(path: Path, obj: Any) -> Path:
    """Write JSON through a temp file + rename so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_png(path: Path, *, channels: int | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a PNG as stored (no palette conversion). channels=1 demands a single-channel image
    (mode P/L/I/I;16), channels=3 an RGB image; size=(H, W) demands that size."""
    path = require_file(path, "PNG file")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.array(im)
    except (OSError, SyntaxError, ValueError) as e:
        raise CorruptMediaError(f"{path}: cannot decode PNG ({e})") from e
    if channels == 1 and arr.ndim != 2:
        raise CorruptMediaError(f"{path}: expected a single-channel (palette/grayscale) PNG, got mode {mode}")
    if channels == 3 and (arr.ndim != 3 or arr.shape[2] < 3):
        raise CorruptMediaError(f"{path}: expected a 3-channel RGB PNG, got mode {mode}")
    if channels == 3:
        arr = arr[..., :3]
    if size is not None and tuple(arr.shape[:2]) != tuple(size):
        raise CorruptMediaError(
            f"{path}: PNG size {arr.shape[0]}x{arr.shape[1]} (HxW) does not match the video's {size[0]}x{size[1]}"
        )
    return arr


def davis_palette() -> list[int]:
    """The DAVIS / PASCAL VOC colour palette (768 ints), computed by the standard bit-interleaving rule."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal.extend([r, g, b])
    return pal


def write_index_png(path: Path, labels: np.ndarray, palette: list[int] | None = None) -> Path:
    """Write a single-channel uint8 label map as a palette PNG (DAVIS palette by default)."""
    if labels.max(initial=0) > 255 or labels.min(initial=0) < 0:
        raise ValueError(f"{path}: index PNG values must be in 0..255")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette(palette if palette is not None else davis_palette())
    im.save(path)
    return path


def write_rgb_png(path: Path, rgb: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb.astype(np.uint8), mode="RGB").save(path)
    return path


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Panoptic id -> RGB (id = R + 256 G + 256^2 B)."""
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, (ids // 256) % 256, (ids // 65536) % 256], axis=-1).astype(np.uint8)


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]).astype(np.int64)


def encode_rle(mask: np.ndarray) -> RLE:
    """bool/uint8 [H, W] -> compressed COCO RLE with ASCII counts (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"]}


def to_compressed_rle(seg: Any, height: int, width: int, where: str) -> RLE:
    """Accept a compressed RLE, an uncompressed RLE or a polygon list; return compressed RLE of size
    (height, width). Raises AnnotationFormatError naming `where` on a size mismatch or bad structure."""
    if isinstance(seg, list):  # polygons
        try:
            rles = mask_utils.frPyObjects(seg, height, width)
            rle = mask_utils.merge(rles)
        except Exception as e:  # pycocotools raises TypeError/ValueError on garbage
            raise AnnotationFormatError(f"{where}: invalid polygon segmentation ({e})") from e
    elif isinstance(seg, dict):
        size = seg.get("size")
        counts = seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2) or counts is None:
            raise AnnotationFormatError(f"{where}: RLE needs 'size' [h, w] and 'counts'")
        if [int(size[0]), int(size[1])] != [height, width]:
            raise AnnotationFormatError(
                f"{where}: RLE size {list(size)} does not match the video size [{height}, {width}]"
            )
        if isinstance(counts, list):
            if sum(int(c) for c in counts) != height * width:
                raise AnnotationFormatError(f"{where}: uncompressed RLE counts do not sum to h*w")
            rle = mask_utils.frPyObjects(seg, height, width)
        elif isinstance(counts, str | bytes):
            rle = {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
            try:
                area = int(mask_utils.area(rle))
            except Exception as e:
                raise AnnotationFormatError(f"{where}: undecodable compressed RLE ({e})") from e
            if area > height * width:
                raise AnnotationFormatError(f"{where}: compressed RLE decodes to more than h*w pixels")
        else:
            raise AnnotationFormatError(f"{where}: RLE 'counts' must be a list or a string")
    else:
        raise AnnotationFormatError(f"{where}: segmentation must be an RLE object or a polygon list")
    counts = rle["counts"]
    return {"size": [height, width], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def check_unique(ids: Iterable[Any], where: str, field: str) -> None:
    """Raise AnnotationFormatError naming the first duplicated id."""
    seen: set[Any] = set()
    for i in ids:
        if i in seen:
            raise AnnotationFormatError(f"{where}: duplicate {field} {i!r}")
        seen.add(i)


def sorted_frame_files(folder: Path, exts: tuple[str, ...] = (".jpg", ".jpeg", ".png")) -> list[Path]:
    """Image files of a frame folder, sorted by name."""
    folder = require_dir(folder, "frame folder")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in exts and p.is_file())


def image_header_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file from its header only (no pixel decoding); an unreadable header is a
    CorruptMediaError naming the file."""
    try:
        with Image.open(path) as im:
            width, height = im.size
    except (OSError, SyntaxError, ValueError) as e:
        raise CorruptMediaError(f"{path}: cannot read image header ({e})") from e
    return int(height), int(width)


def require_int(obj: Any, key: str, where: str) -> int:
    """`obj[key]` as an int; missing, non-int or bool values are AnnotationFormatErrors naming `where`."""
    value = require_key(obj, key, where, (int,))
    if isinstance(value, bool):
        raise AnnotationFormatError(f"{where}: field '{key}' must be int, got bool")
    return int(value)
