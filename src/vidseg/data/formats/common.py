"""Helpers shared by the format readers/writers: validated JSON and PNG I/O, RLE conversion, atomic writes."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from vidseg.data.records import RLE, AnnotationFormatError, CorruptMediaError, MissingFileError
from vidseg.metrics._rle import DecodedRLEs  # the project's RLE string decoder (shared with the VIS metric)


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


def read_name_list(path: Path, what: str, item: str) -> list[str]:
    """The names of a list file (one per line, surrounding blanks and blank lines ignored): `what` names a
    missing file; a file that is not UTF-8, names nothing or names an `item` twice is an AnnotationFormatError."""
    path = require_file(path, what)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise AnnotationFormatError(f"{path}: {what} is not UTF-8 text ({e})") from e
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise AnnotationFormatError(f"{path}: {what} names no {item}")
    check_unique(names, str(path), item)
    return names


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
    (mode P/L/I/I;16), channels=3 an 8-bit RGB image (PIL would keep only the high byte of a 16-bit one);
    size=(H, W) demands that size."""
    path = require_file(path, "PNG file")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            depth = _png_bit_depth(path) if im.format == "PNG" else 8
            arr = np.array(im)
    except (OSError, SyntaxError, ValueError) as e:
        raise CorruptMediaError(f"{path}: cannot decode PNG ({e})") from e
    if channels == 1 and arr.ndim != 2:
        raise CorruptMediaError(f"{path}: expected a single-channel (palette/grayscale) PNG, got mode {mode}")
    if channels == 3 and (arr.ndim != 3 or arr.shape[2] < 3):
        raise CorruptMediaError(f"{path}: expected a 3-channel RGB PNG, got mode {mode}")
    if channels == 3 and depth != 8:
        raise CorruptMediaError(f"{path}: expected an 8-bit RGB PNG, got {depth} bits per channel")
    if channels == 3:
        arr = arr[..., :3]
    if size is not None and tuple(arr.shape[:2]) != tuple(size):
        raise CorruptMediaError(
            f"{path}: PNG size {arr.shape[0]}x{arr.shape[1]} (HxW) does not match the video's {size[0]}x{size[1]}"
        )
    return arr


def _png_bit_depth(path: Path) -> int:
    """Bits per sample from a PNG's IHDR chunk (byte 24: after the signature, chunk length and type, width, height)."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[12:16] != b"IHDR":
        raise CorruptMediaError(f"{path}: PNG without an IHDR header")
    return head[24]


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
    (height, width). Raises AnnotationFormatError naming `where` on a size mismatch or bad structure, and on a
    compressed string that does not decode to height x width pixels (`to_compressed_rles`)."""
    return to_compressed_rles([seg], height, width, lambda _: where)[0]


def to_compressed_rles(segs: Sequence[Any], height: int, width: int, where: Callable[[int], str]) -> list[RLE]:
    """`to_compressed_rle` of each of `segs` (none None), `where(k)` naming segs[k] in errors. Compressed strings
    are checked all at once by the project's RLE decoder (`vidseg.metrics._rle`): characters, truncation,
    negative runs, and run lengths that must sum to height x width."""
    out = [_compressed_rle(seg, height, width, where(k)) for k, seg in enumerate(segs)]
    strings = [k for k, seg in enumerate(segs) if isinstance(seg, dict) and isinstance(seg["counts"], str | bytes)]
    if strings:
        DecodedRLEs([out[k] for k in strings], height, width).check(lambda i: where(strings[i]))
    return out


def _compressed_rle(seg: Any, height: int, width: int, where: str) -> RLE:
    if isinstance(seg, list):  # polygons: each a flat list of x, y pairs (at least 3 points)
        for k, poly in enumerate(seg):
            if (not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2
                    or not all(is_number(c) for c in poly)):
                raise AnnotationFormatError(f"{where}: polygon {k} must be a flat list of x, y numbers (at least "
                                            "3 points)")
        try:
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        except Exception as e:  # pycocotools raises TypeError/ValueError on garbage
            raise AnnotationFormatError(f"{where}: invalid polygon segmentation ({e})") from e
    elif isinstance(seg, dict):
        size = seg.get("size")
        counts = seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)) or counts is None:
            raise AnnotationFormatError(f"{where}: RLE needs 'size' [h, w] (ints) and 'counts'")
        if [int(size[0]), int(size[1])] != [height, width]:
            raise AnnotationFormatError(
                f"{where}: RLE size {list(size)} does not match the video size [{height}, {width}]"
            )
        if isinstance(counts, list):
            # map/min/sum run in C: a 200 MB train JSON holds ~10^8 counts (a generator of isinstance checks took
            # 85% of YouTube-VIS read time)
            if not set(map(type, counts)) <= {int} or (counts and min(counts) < 0):
                raise AnnotationFormatError(f"{where}: uncompressed RLE counts must be non-negative ints")
            if sum(counts) != height * width:
                raise AnnotationFormatError(f"{where}: uncompressed RLE counts do not sum to h*w")
            rle = mask_utils.frPyObjects(seg, height, width)
        elif isinstance(counts, str | bytes):
            rle = {"size": [height, width], "counts": counts}  # decoded and checked by the caller, in one pass
        else:
            raise AnnotationFormatError(f"{where}: RLE 'counts' must be a list or a string")
    else:
        raise AnnotationFormatError(f"{where}: segmentation must be an RLE object or a polygon list")
    counts = rle["counts"]
    if isinstance(counts, bytes):
        try:
            counts = counts.decode("ascii")
        except UnicodeDecodeError as e:
            raise AnnotationFormatError(f"{where}: RLE counts string holds non-ASCII bytes") from e
    return {"size": [height, width], "counts": counts}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): what JSON numbers in annotations must be."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


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
