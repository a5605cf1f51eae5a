"""COCO compressed RLEs as run lengths, and exact pixel intersections of RLE pairs, in compiled loops.

Why: the YouTube-VIS video IoU needs, per video, the area of every mask and the intersection of every
(prediction, GT) pair on the same frame. pycocotools computes those from the same strings, but decodes every
string again in each call, builds bounding boxes for all pairs of a call and returns IoUs from which the
intersections must be recovered. Here each string of a video is decoded once (numba, `cache=True`: compiled
on first use, then loaded from `__pycache__`), areas and foreground extents come out of the decode, and the
intersection of a pair is a merge of the two lists of foreground intervals (pairs whose extents do not meet
cost nothing). Results equal pycocotools' (tests/metrics/test_rle_kernels.py).

The compressed format (COCO `rleToString`): each count is a little-endian run of 5-bit groups stored as
chars 48 + group (+32 when another group follows); the last group's bit 0x10 is the sign; from the fourth
count on, the stored value is the difference to the count two places back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numba
import numpy as np
from pycocotools import mask as mask_utils

from vidseg.data.records import RLE, AnnotationFormatError

DECODE_OK, DECODE_TRUNCATED, DECODE_NEGATIVE, DECODE_WRONG_SUM, DECODE_BAD_CHAR = 0, 1, 2, 3, 4
_PROBLEMS = {
    DECODE_BAD_CHAR: "holds a character outside '0'..'o' (48..111)",
    DECODE_TRUNCATED: "ends inside a count",
    DECODE_NEGATIVE: "decodes to a negative run length",
    DECODE_WRONG_SUM: "has run lengths whose sum is not height*width",
}


@numba.njit(cache=True, nogil=True)
def _decode(buf: np.ndarray, bounds: np.ndarray, pixels: int):  # pragma: no cover - compiled
    """Runs of every string buf[bounds[i]:bounds[i+1]] of a `pixels`-pixel mask: (runs, run offsets [n+1], areas,
    first and last+1 foreground pixel (column-major; 0, 0 when empty), status per string)."""
    n = len(bounds) - 1
    total, outside = 0, 0  # a count ends at each char without the continuation bit: the exact size of `runs`
    for p in range(len(buf)):
        total += (buf[p] - 48) & 0x20 == 0
        outside += (buf[p] < 48) | (buf[p] > 111)
    runs = np.empty(total + 1, np.int64)
    offsets = np.zeros(n + 1, np.int64)
    area = np.zeros(n, np.int64)
    first = np.zeros(n, np.int64)
    last = np.zeros(n, np.int64)
    status = np.zeros(n, np.int64)
    m = 0
    for i in range(n):
        p, end, start_m = bounds[i], bounds[i + 1], m
        pos, fg, s, e = np.int64(0), np.int64(0), np.int64(-1), np.int64(0)
        bad, odd = DECODE_OK, False
        if outside:
            for q in range(p, end):
                if buf[q] < 48 or buf[q] > 111:
                    bad, p = DECODE_BAD_CHAR, end  # decode nothing of this string
                    break
        while p < end:
            c = np.int64(buf[p]) - 48
            p += 1
            if c & 0x20 == 0:  # a one-char count (most of them): 5 bits, bit 4 the sign
                x = c - 32 if c & 0x10 else c
            else:
                x, shift = c & 0x1F, 5
                while True:
                    if p >= end:
                        bad = DECODE_TRUNCATED
                        break
                    c = np.int64(buf[p]) - 48
                    p += 1
                    x |= (c & 0x1F) << shift
                    shift += 5
                    if c & 0x20 == 0:
                        if c & 0x10:
                            x |= np.int64(-1) << shift
                        break
                if bad:
                    break
            if m - start_m > 2:
                x += runs[m - 2]
            if x < 0:
                bad = DECODE_NEGATIVE
                break
            runs[m] = x
            m += 1
            if odd and x > 0:
                fg += x
                if s < 0:
                    s = pos
                e = pos + x
            pos += x
            odd = not odd
        offsets[i + 1] = m
        if bad == DECODE_OK and pos != pixels:
            bad = DECODE_WRONG_SUM
        status[i] = bad
        area[i] = fg
        first[i] = max(s, 0)
        last[i] = e
    return runs[:m], offsets, area, first, last, status


@numba.njit(cache=True, nogil=True)
def _intersections(
    runs: np.ndarray, offsets: np.ndarray, first: np.ndarray, last: np.ndarray, pa: np.ndarray, pb: np.ndarray
) -> np.ndarray:  # pragma: no cover - compiled
    """Foreground pixels shared by masks pa[k] and pb[k], by merging their foreground intervals."""
    out = np.zeros(len(pa), np.int64)
    for k in range(len(pa)):
        a, b = pa[k], pb[k]
        if last[a] <= first[b] or last[b] <= first[a]:
            continue
        ia, ea, ib, eb = offsets[a], offsets[a + 1], offsets[b], offsets[b + 1]
        pos_a, pos_b, total = np.int64(0), np.int64(0), np.int64(0)
        sa, ta, sb, tb = np.int64(0), np.int64(0), np.int64(0), np.int64(0)
        have_a, have_b = False, False
        while True:
            if not have_a:  # next foreground interval of a: skip a background run, take a foreground one
                if ia + 1 >= ea:
                    break
                sa = pos_a + runs[ia]
                ta = sa + runs[ia + 1]
                pos_a, ia, have_a = ta, ia + 2, True
            if not have_b:
                if ib + 1 >= eb:
                    break
                sb = pos_b + runs[ib]
                tb = sb + runs[ib + 1]
                pos_b, ib, have_b = tb, ib + 2, True
            lo, hi = max(sa, sb), min(ta, tb)
            if hi > lo:
                total += hi - lo
            if ta <= tb:
                have_a = False
            if tb <= ta:
                have_b = False
        out[k] = total
    return out


class DecodedRLEs:
    """Compressed RLEs of one height x width decoded once: `area` [n] (int64) and exact
    `intersections(pa, pb)`. Uncompressed RLEs (list counts) are compressed first with pycocotools.
    Malformed strings are flagged in `status`; `check` raises naming the first one."""

    def __init__(self, rles: Sequence[RLE], height: int, width: int) -> None:
        counts = [rle["counts"] for rle in rles]
        joined_str = "".join(counts) if all(type(c) is str for c in counts) else None
        if joined_str is not None and joined_str.isascii():
            joined = joined_str.encode("ascii")
        else:  # bytes, lists, or non-ASCII text (its UTF-8 bytes are outside the alphabet: flagged, not decoded)
            counts = [_as_bytes(c, height, width) for c in counts]
            joined = b"".join(counts)
        bounds = np.zeros(len(counts) + 1, np.int64)
        np.cumsum([len(c) for c in counts], out=bounds[1:])
        buf = np.frombuffer(joined, np.uint8)
        decoded = _decode(buf, bounds, int(height) * int(width))
        self.runs, self.offsets, self.area, self._first, self._last, self.status = decoded

    def check(self, name: Callable[[int], str]) -> None:
        """Raise AnnotationFormatError("<name(i)>: <problem>") for the first malformed string."""
        bad = np.flatnonzero(self.status != DECODE_OK)
        if len(bad):
            i = int(bad[0])
            raise AnnotationFormatError(f"{name(i)}: RLE counts string {_PROBLEMS[int(self.status[i])]}")

    def intersections(self, pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
        """Exact intersection (pixels) of masks pa[k] and pb[k] (indices into this list)."""
        pa, pb = np.ascontiguousarray(pa, np.int64), np.ascontiguousarray(pb, np.int64)
        return _intersections(self.runs, self.offsets, self._first, self._last, pa, pb)


def _as_bytes(counts: str | bytes | list, height: int, width: int) -> bytes:
    if isinstance(counts, bytes):
        return counts
    if isinstance(counts, str):
        return counts.encode("utf-8")
    return mask_utils.frPyObjects({"size": [height, width], "counts": list(counts)}, height, width)["counts"]


def same_group_pairs(a_group: np.ndarray, b_group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (a, b) index pair with a_group[a] == b_group[b], grouped by a in ascending order."""
    a_group, b_group = np.asarray(a_group, np.int64), np.asarray(b_group, np.int64)
    b_order = np.argsort(b_group, kind="stable")
    b_sorted = b_group[b_order]
    lo = np.searchsorted(b_sorted, a_group, side="left")
    per_a = np.searchsorted(b_sorted, a_group, side="right") - lo
    pa = np.repeat(np.arange(len(a_group)), per_a)
    within = np.arange(len(pa)) - np.repeat(np.cumsum(per_a) - per_a, per_a)
    return pa, b_order[np.repeat(lo, per_a) + within]
