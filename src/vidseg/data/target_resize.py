"""Nearest-neighbour resizing of dense training targets (masks, semantic maps) for `ClipTransform`.

Crop and flip are folded into the gather indices (`_nearest_index`: half-pixel centres, flip-symmetric), and masks
are gathered only inside their bounding boxes; `RLEClipMasks` does the same from run lengths.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mask_boxes"]


def _nearest_index(size_in: int, size_out: int, offset: int, flip: bool) -> np.ndarray:
    """Source index of each output pixel for a nearest resize with half-pixel centres (flip-symmetric)."""
    idx = np.floor((np.arange(size_out) + 0.5) * (size_in / size_out)).astype(np.int64)
    idx = np.minimum(idx, size_in - 1)
    if flip:
        idx = idx[::-1]
    return idx + offset


def _gather(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """x[..., rows, :][..., cols]; the cheaper axis is gathered first."""
    if rows.size >= x.shape[-2]:  # upsampling rows: gather columns on the fewer source rows first
        lo, hi = int(rows.min()), int(rows.max()) + 1
        part = np.take(x[..., lo:hi, :], cols, axis=-1)
        return np.take(part, rows - lo, axis=-2)
    return np.take(np.take(x, rows, axis=-2), cols, axis=-1)


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """bool [..., H, W] (any strides) -> int64 [..., 4] bounding boxes (top, bottom, left, right), ends
    exclusive; all zeros for an empty mask."""
    rows, cols = masks.any(-1), masks.any(-2)
    h, w = masks.shape[-2:]
    boxes = np.stack([rows.argmax(-1), h - rows[..., ::-1].argmax(-1),
                      cols.argmax(-1), w - cols[..., ::-1].argmax(-1)], -1).astype(np.int64)
    boxes[~rows.any(-1)] = 0
    return boxes


def _has_pixels_in(masks: np.ndarray, boxes: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """bool [M]: whether each mask [M, H, W] has a pixel in window (top, bottom, left, right). Exact; reads
    pixels only where a box straddles the window's edge."""
    top, bottom, left, right = window
    out = np.zeros(len(masks), dtype=bool)
    for k, (t0, t1, l0, l1) in enumerate(boxes.tolist()):
        r0, r1, c0, c1 = max(t0, top), min(t1, bottom), max(l0, left), min(l1, right)
        if r0 >= r1 or c0 >= c1:
            continue
        out[k] = (r0, r1, c0, c1) == (t0, t1, l0, l1) or bool(masks[k, r0:r1, c0:c1].any())
    return out


def _resize_masks(masks: np.ndarray, boxes: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                  out: np.ndarray) -> np.ndarray:
    """Nearest-resize every mask [..., H, W] into out[..., :len(rows), :len(cols)] (pre-zeroed), gathering
    only the output block that its bounding box maps to. Returns bool [...]: output mask non-empty."""
    nonempty = np.zeros(masks.shape[:-2], dtype=bool)
    # rows is non-decreasing, cols monotonic (decreasing when flipped): a box maps to one output block
    col_order = np.arange(cols.size) if cols.size < 2 or cols[0] <= cols[-1] else np.arange(cols.size)[::-1]
    sorted_cols = cols[col_order]
    for idx in np.ndindex(*masks.shape[:-2]):
        top, bottom, left, right = boxes[idx].tolist()
        if bottom <= top:
            continue
        i0, i1 = np.searchsorted(rows, [top, bottom])
        k0, k1 = np.searchsorted(sorted_cols, [left, right])
        if i0 >= i1 or k0 >= k1:
            continue
        j = col_order[k0:k1]
        j0, j1 = int(j.min()), int(j.max()) + 1
        src = masks[idx][top:bottom, left:right]
        if src.strides[-1] != 1:  # column-major (pycocotools) masks: one small transposing copy
            src = np.ascontiguousarray(src)
        block = np.take(np.take(src, rows[i0:i1] - top, axis=0), cols[j0:j1] - left, axis=1)
        out[idx][i0:i1, j0:j1] = block
        nonempty[idx] = block.any()
    return nonempty
