"""pycocotools' own C RLE routines (its maskApi: rleFrString, rleArea, rleIou), called through ctypes on many
RLEs at once. Private to `vidseg.metrics`.

Why: pycocotools' Python API decodes every compressed RLE string again in each call (`area`, then `iou`) and
builds one Python object per RLE. Here all strings of a batch are decoded by one `rleFrString` call on their
concatenation, their counts stay in one numpy buffer, and `rleArea` / `rleIou` run on arrays of RLE structs
pointing into it, so each string is decoded once. The routines are the library's compiled ones (exported
by its `_mask` extension); when they cannot be loaded, or fail a self-test against the Python API at load
time, `available()` is False and callers use the Python API.

Concatenated decoding: a compressed string codes counts[j] for j > 2 as a delta to counts[j - 2]. Decoded
as one string (after three zero counts, so that every real count is delta-coded), counts[j] of a string
starting at global position b reads A[b + j] = x_j + A[b + j - 2], whence its own values are
A[b] - A[b - 2] (j = 0), A[b + j] - A[b - 1] (j odd) and A[b + j] - A[b] (j even >= 2), in uint32
arithmetic as in C.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import numpy as np
import numpy.ctypeslib  # noqa: F401 - imported here, not lazily on the first decode
from pycocotools import _mask
from pycocotools import mask as mask_utils

_PREFIX = b"000"  # three zero counts
_TOKEN_END = 0x20  # a character without this bit (after subtracting 48) ends a count


class _RLEStruct(ctypes.Structure):
    """pycocotools maskApi.h: typedef struct { siz h, w, m; uint *cnts; } RLE; (siz = unsigned long)."""

    _fields_ = [
        ("h", ctypes.c_ulong),
        ("w", ctypes.c_ulong),
        ("m", ctypes.c_ulong),
        ("cnts", ctypes.c_size_t),  # uint *cnts, as an address (numpy has no pointer type)
    ]


_RLE_DTYPE = np.dtype(_RLEStruct) if ctypes.sizeof(ctypes.c_size_t) == ctypes.sizeof(ctypes.c_void_p) else None
_LIB: ctypes.CDLL | None = None
_LOADED = False


def _load() -> ctypes.CDLL | None:
    if _RLE_DTYPE is None:
        return None
    try:
        lib = ctypes.CDLL(_mask.__file__)
        ptr = ctypes.POINTER(_RLEStruct)
        lib.rleFrString.argtypes = [ptr, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_ulong]
        lib.rleFrString.restype = None
        lib.rleFree.argtypes = [ptr]
        lib.rleFree.restype = None
        lib.rleArea.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p]
        lib.rleArea.restype = None
        lib.rleIou.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_void_p,
                               ctypes.c_void_p]  # fmt: skip
        lib.rleIou.restype = None
    except (ImportError, OSError, AttributeError):
        return None
    # self-test against the Python API on a few masks (layout or signature drift disables the C path)
    masks = (np.arange(7 * 9 * 5).reshape(7, 9, 5) * 2654435761 % 1000) < 450  # fixed irregular masks
    masks[..., 2] = False
    rles = [mask_utils.encode(np.asfortranarray(masks[..., i].astype(np.uint8))) for i in range(5)]
    rles = [dict(r, size=[7, 9]) for r in rles]
    try:
        counts = decode_counts([r["counts"] for r in rles], lib)
        if counts is None:
            return None
        structs = make_structs(*counts, np.full(5, 7), np.full(5, 9))
        ok = np.array_equal(areas(structs, lib), np.asarray(mask_utils.area(rles), np.int64))
        ours = ious(structs[:3], structs[2:], lib)
        ok = ok and np.array_equal(ours, np.asarray(mask_utils.iou(rles[:3], rles[2:], [0] * 3)).reshape(3, 3))
    except (ValueError, TypeError, OSError):
        return None
    return lib if ok else None


def _lib() -> ctypes.CDLL | None:
    global _LIB, _LOADED
    if not _LOADED:
        _LOADED = True
        _LIB = _load()
    return _LIB


def available() -> bool:
    """Whether pycocotools' C RLE routines could be loaded and passed the self-test."""
    return _lib() is not None


def decode_counts(
    strings: Sequence[str | bytes], lib: ctypes.CDLL | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Decode compressed RLE count strings in one `rleFrString` call: (buffer uint32, start of each string's
    counts in it, number of counts). The buffer must outlive the structs made from it. None when a string is
    not bytes/str or does not end a count at its end (left to the Python API and its errors)."""
    lib = lib or _lib()
    if lib is None:
        return None
    try:  # the usual case: all str (JSON) or all bytes (mask_utils.encode), ASCII
        joined = "".join(strings).encode() if strings and isinstance(strings[0], str) else b"".join(strings)
        raw = strings if len(joined) == sum(map(len, strings)) else None
    except TypeError:
        raw = None
    if raw is None:  # mixed or non-ASCII: one string at a time
        raw = []
        for s in strings:
            if isinstance(s, str):
                s = s.encode()
            elif not isinstance(s, bytes):
                return None
            raw.append(s)
        joined = b"".join(raw)
    if b"\0" in joined:
        return None
    ends = ((np.frombuffer(joined, np.uint8) - np.uint8(48)) & np.uint8(_TOKEN_END)) == 0
    lengths = np.fromiter(map(len, raw), np.int64, len(raw))
    stops = np.cumsum(lengths)
    nonempty = lengths > 0
    if not ends[stops[nonempty] - 1].all():
        return None  # a string ending inside a count would run into the next one
    before = _count_before(ends, stops)
    num = np.diff(before, prepend=0)
    rle = _RLEStruct()
    lib.rleFrString(ctypes.byref(rle), _PREFIX + joined, 0, 0)
    try:
        total = int(rle.m)
        if total != len(_PREFIX) + int(num.sum()):
            return None
        counts = ctypes.cast(rle.cnts, ctypes.POINTER(ctypes.c_uint))
        buf = np.ctypeslib.as_array(counts, shape=(total,)).copy() if total else np.zeros(0, np.uint32)
    finally:
        lib.rleFree(ctypes.byref(rle))
    first = np.cumsum(num) - num + len(_PREFIX)  # position of each string's first count in buf
    _undelta(buf, first[num > 0], num[num > 0])
    return buf, first, num


def _count_before(flags: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Number of True flags before each stop position: popcounts of the packed bits (8 flags a byte)."""
    packed = np.append(np.packbits(flags), np.uint8(0))
    cumulative = np.concatenate([[0], np.cumsum(np.bitwise_count(packed), dtype=np.int64)])
    byte, rest = stops // 8, stops % 8
    top_bits = (np.uint16(0xFF00) >> rest.astype(np.uint16)).astype(np.uint8)  # the first `rest` flags of a byte
    return cumulative[byte] + np.bitwise_count(packed[byte] & top_bits)


def _undelta(buf: np.ndarray, first: np.ndarray, num: np.ndarray) -> None:
    """In place: the counts of each string (first position, number of counts) from the concatenated decoding.
    buf[0:3] are zeros (the prefix)."""
    if len(first) == 0:
        return
    head = buf[first] - buf[first - 2]  # j = 0
    # in each parity class of the global position the value subtracted is constant from a string's first count
    # of that class on: A[b] in the class of b (j even), A[b - 1] in the other one (j odd): a cumulative sum
    # of the changes at those positions
    for parity in (0, 1):
        same = (first % 2) == parity
        valid = np.where(same, num >= 1, num >= 2)
        pos = np.where(same, first, first + 1)[valid] // 2  # index in the class
        val = buf[np.where(same, first, first - 1)[valid]]
        cls = buf[parity::2]
        # the class holds 0 (prefix) before the first string's count, then val[k] from pos[k] on
        runs = np.diff(np.concatenate([[0], pos, [len(cls)]]))
        cls -= np.repeat(np.concatenate([[0], val]).astype(np.uint32), runs)
    buf[first] = head


def make_structs(
    buf: np.ndarray, first: np.ndarray, num: np.ndarray, heights: np.ndarray, widths: np.ndarray
) -> np.ndarray:
    """RLE structs (numpy records with pycocotools' layout) over `buf`, one per string, with the given declared
    sizes (the routines only compare sizes for equality and take the height for bounding boxes)."""
    out = np.zeros(len(first), _RLE_DTYPE)
    out["h"] = heights
    out["w"] = widths
    out["m"] = num
    out["cnts"] = buf.ctypes.data + 4 * np.asarray(first, np.uint64)
    return out


def areas(structs: np.ndarray, lib: ctypes.CDLL | None = None) -> np.ndarray:
    """int64 pixel areas (`rleArea`)."""
    lib = lib or _lib()
    structs = np.ascontiguousarray(structs)
    out = np.zeros(len(structs), np.uint32)
    if len(structs):
        lib.rleArea(structs.ctypes.data, len(structs), out.ctypes.data)
    return out.astype(np.int64)


def ious(dt: np.ndarray, gt: np.ndarray, lib: ctypes.CDLL | None = None) -> np.ndarray:
    """[len(dt), len(gt)] IoUs as pycocotools' `iou(dt, gt, [0] * len(gt))` gives them (-1 for pairs of
    different declared sizes whose boxes overlap, 0 for pairs whose boxes do not)."""
    lib = lib or _lib()
    dt, gt = np.ascontiguousarray(dt), np.ascontiguousarray(gt)
    out = np.zeros(len(dt) * len(gt), np.float64)
    if len(out):
        lib.rleIou(dt.ctypes.data, gt.ctypes.data, len(dt), len(gt), None, out.ctypes.data)
    return out.reshape(len(gt), len(dt)).T
