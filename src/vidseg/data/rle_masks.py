"""A clip's target masks kept as COCO RLEs until `ClipTransform` resizes them, for the RLE formats (YouTube-VIS,
OVIS, BURST, ...).

Why: decoding each full-size mask (pycocotools, then a transposing copy into the [N, T, H, W] stack) cost about
4 ms of a 480p 3-frame clip, while training needs only the nearest-neighbour samples of the crop, and the crop
draw only whether a mask has a pixel inside a window. Both are answered here from the run lengths (compiled
loops over the foreground runs, column-major as COCO stores them), writing the resized masks straight into the
padded output. The results equal decoding then gathering (tests/data/test_rle_masks.py). Malformed strings are
errors naming the video, track and frame.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numba
import numpy as np

from vidseg.data.mask_rects import paint_rows
from vidseg.data.records import RLE, AnnotationFormatError
from vidseg.metrics._rle import DecodedRLEs  # the project's RLE string decoder (shared with the VIS metric)

__all__ = ["RLEClipMasks"]


@numba.njit(cache=True, nogil=True)
def _resize_rects(runs, offsets, masks, height, row_start, col_lo, col_hi, rects, nonempty):  # pragma: no cover
    """The nearest resize of mask masks[q]'s runs as output blocks, rows (q, i0, i1, j0, j1) of `rects`: the output
    rows of source rows [a, b) are row_start[a]:row_start[b], the output columns of source column x are
    col_lo[x]:col_hi[x], and a run is one block per source column it covers. nonempty[q]: any block. Returns the
    number of blocks; rows beyond len(rects) are only counted (call again with enough rows)."""
    r = 0
    for q in range(len(masks)):
        m = masks[q]
        pos, hit = 0, False
        for k in range(offsets[m], offsets[m + 1]):
            length = runs[k]
            if (k - offsets[m]) % 2 == 1 and length > 0:
                a, b = pos, pos + length
                x0, x1 = a // height, (b - 1) // height
                for x in range(x0, x1 + 1):
                    j0, j1 = col_lo[x], col_hi[x]
                    if j0 >= j1:
                        continue
                    i0 = row_start[a - x * height] if x == x0 else row_start[0]
                    i1 = row_start[b - x * height] if x == x1 else row_start[height]
                    if i0 >= i1:
                        continue
                    hit = True
                    if r < len(rects):
                        rects[r, 0], rects[r, 1], rects[r, 2], rects[r, 3], rects[r, 4] = q, i0, i1, j0, j1
                    r += 1
            pos += length
        nonempty[q] = hit
    return r


@numba.njit(cache=True, nogil=True)
def _boxes(runs, offsets, height, out):  # pragma: no cover - compiled
    """out[m] = (top, bottom, left, right), ends exclusive, of flat mask m's foreground (left untouched when empty).
    Runs are column-major and ascending, so the first foreground run holds the leftmost column, the last the
    rightmost; a run over two or more columns covers the last rows of one column and the first of the next."""
    for m in range(len(offsets) - 1):
        pos, top, bottom, left, right = 0, height, 0, -1, 0
        for k in range(offsets[m], offsets[m + 1]):
            length = runs[k]
            if (k - offsets[m]) % 2 == 1 and length > 0:
                a, b = pos, pos + length
                x0, x1 = a // height, (b - 1) // height
                if left < 0:
                    left = x0
                right = x1 + 1
                if x0 == x1:
                    top, bottom = min(top, a - x0 * height), max(bottom, b - x0 * height)
                else:
                    top, bottom = 0, height
            pos += length
        if left >= 0:
            out[m, 0], out[m, 1], out[m, 2], out[m, 3] = top, bottom, left, right


@numba.njit(cache=True, nogil=True)
def _any_in(runs, offsets, masks, height, top, bottom, left, right, out):  # pragma: no cover
    """out[q]: whether mask masks[q] has a pixel in rows [top, bottom) x columns [left, right)."""
    for q in range(len(masks)):
        m = masks[q]
        pos = 0
        for k in range(offsets[m], offsets[m + 1]):
            length = runs[k]
            if pos >= right * height:
                break
            if (k - offsets[m]) % 2 == 1 and length > 0:
                a, b = pos, pos + length
                for x in range(max(a // height, left), min((b - 1) // height, right - 1) + 1):
                    ya = a - x * height if x == a // height else 0
                    yb = b - x * height if x == (b - 1) // height else height
                    if max(ya, top) < min(yb, bottom):
                        out[q] = True
                        break
                if out[q]:
                    break
            pos += length


class RLEClipMasks:
    """bool [N, T, H, W] masks given as an N x T grid of compressed COCO RLEs (None: absent, all False), decoded
    to run lengths once; N may be 0. `where(n, t)` names a mask in error messages (video, track, frame)."""

    def __init__(self, rles: Sequence[Sequence[RLE | None]], frames: int, height: int, width: int,
                 where: Callable[[int, int], str] | None = None) -> None:
        self.height, self.width = int(height), int(width)
        n, t = len(rles), int(frames)
        if any(len(row) != t for row in rles):
            raise ValueError(f"RLEClipMasks: every target needs {t} entries (one per frame), got "
                             f"{sorted({len(row) for row in rles})}")
        self.shape = (n, t, self.height, self.width)
        name = where or (lambda i, j: f"mask ({i}, {j})")
        present, strings = [], []
        for i, row in enumerate(rles):
            for j, rle in enumerate(row):
                if rle is None:
                    continue
                if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
                    raise AnnotationFormatError(f"{name(i, j)}: an RLE needs 'size' and 'counts', got {rle!r:.80}")
                size = [int(s) for s in rle["size"]]
                if size != [self.height, self.width]:
                    raise AnnotationFormatError(f"{name(i, j)}: mask of size {'x'.join(map(str, size))}, the video "
                                                f"is {self.height}x{self.width}")
                present.append(i * t + j)
                strings.append(rle)
        decoded = DecodedRLEs(strings, self.height, self.width)
        decoded.check(lambda k: name(*divmod(present[k], t)))
        # runs of flat mask index n * T + t (`present` is ascending, so the decoded runs are in that order already);
        # absent masks have none
        counts = np.zeros(n * t, np.int64)
        counts[present] = np.diff(decoded.offsets)
        self._runs = decoded.runs
        self._offsets = np.zeros(n * t + 1, np.int64)
        np.cumsum(counts, out=self._offsets[1:])

    def boxes(self) -> np.ndarray:
        """Exact bounding boxes int64 [N, T, 4] (top, bottom, left, right; ends exclusive; zeros when absent or
        empty), from the decoded runs (pycocotools' toBbox would parse every string again)."""
        n, t = self.shape[:2]
        out = np.zeros((n * t, 4), np.int64)
        _boxes(self._runs, self._offsets, self.height, out)
        return out.reshape(n, t, 4)

    def has_pixels_in(self, masks: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
        """bool [len(masks)]: whether each flat mask index n * T + t has a pixel in (top, bottom, left, right)."""
        top, bottom, left, right = (int(v) for v in window)
        masks = np.asarray(masks, np.int64)
        if masks.size and not (masks.min() >= 0 and masks.max() < self.shape[0] * self.shape[1]):
            raise IndexError(f"RLEClipMasks: mask indices must be in [0, {self.shape[0] * self.shape[1]})")
        out = np.zeros(len(masks), dtype=bool)
        _any_in(self._runs, self._offsets, masks, self.height, top, bottom, left, right, out)
        return out

    def resize_into(self, rows: np.ndarray, cols: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Nearest-resize every mask into out[n, t, :len(rows), :len(cols)] (pre-zeroed bool [N, T, Hp, Wp]):
        output pixel (i, j) takes source pixel (rows[i], cols[j]); rows non-decreasing, cols monotonic. Returns
        bool [N, T]: output mask non-empty."""
        n, t = self.shape[:2]
        if (out.dtype != np.bool_ or out.shape[:2] != (n, t) or out.shape[2] < len(rows) or out.shape[3] < len(cols)
                or not out.flags.c_contiguous):
            raise ValueError(f"RLEClipMasks.resize_into: out must be C-contiguous bool [{n}, {t}, >={len(rows)}, "
                             f">={len(cols)}], got {out.dtype} {out.shape}")
        rects, nonempty = self.resize_rects(rows, cols)
        paint_rows(rects, out.reshape(n * t, *out.shape[2:]))
        return nonempty

    def resize_rects(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The nearest-resized masks of `resize_into` as rectangles, without painting them: (int32 [R, 5] rows
        (n * T + t, i0, i1, j0, j1), each True on out[n, t, i0:i1, j0:j1] and disjoint within a mask; bool [N, T]
        output mask non-empty). A few hundred rows per mask instead of its pixels (`vidseg.data.mask_rects`)."""
        n, t = self.shape[:2]
        row_start, col_lo, col_hi = self._blocks(rows, cols, "resize_rects")
        nonempty = np.zeros(n * t, dtype=bool)
        args = (self._runs, self._offsets, np.arange(n * t, dtype=np.int64), self.height, row_start, col_lo, col_hi)
        rects = np.empty((len(self._runs), 5), np.int32)
        count = _resize_rects(*args, rects, nonempty)
        if count > len(rects):  # runs spanning many columns: count first, then fill
            rects = np.empty((count, 5), np.int32)
            _resize_rects(*args, rects, nonempty)
        return rects[:count], nonempty.reshape(n, t)

    def _blocks(self, rows: np.ndarray, cols: np.ndarray, caller: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The kernels' view of a nearest resize: output rows of source rows [a, b) are row_start[a]:row_start[b],
        output columns of source column x are col_lo[x]:col_hi[x]."""
        if len(rows) and (rows.min() < 0 or rows.max() >= self.height or np.any(np.diff(rows) < 0)):
            raise ValueError(f"RLEClipMasks.{caller}: rows must be non-decreasing in [0, {self.height})")
        if len(cols) and (cols.min() < 0 or cols.max() >= self.width):
            raise ValueError(f"RLEClipMasks.{caller}: cols must be in [0, {self.width})")
        row_start = np.searchsorted(rows, np.arange(self.height + 1), side="left").astype(np.int64)
        xs = np.arange(self.width)
        if len(cols) < 2 or cols[0] <= cols[-1]:
            col_lo, col_hi = np.searchsorted(cols, xs, "left"), np.searchsorted(cols, xs, "right")
        else:  # flipped: decreasing
            rev = cols[::-1]
            col_lo = len(cols) - np.searchsorted(rev, xs, "right")
            col_hi = len(cols) - np.searchsorted(rev, xs, "left")
        return row_start, col_lo.astype(np.int64), col_hi.astype(np.int64)
