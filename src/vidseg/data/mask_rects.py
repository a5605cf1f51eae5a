"""Target masks handed over as rectangles and painted where they are used (e.g. on the accelerator).

With `data.resize_on_device`, a clip whose targets are RLEs (YouTube-VIS, OVIS, ...) and that needs no prompt points
leaves the worker as `ClipSample.mask_rects`: int32 [R, 5] rows (k * T + t, i0, i1, j0, j1), each saying that
target k is True on frame t's pixels [i0:i1, j0:j1] of the resized clip (`RLEClipMasks.resize_rects`: the nearest
resize of a run is one rectangle per source column). `Batch.to` paints them into the batch's padded canvas. Why: the
resized masks are bool [K, T, H, W], twice a 480p clip's crop in bytes with three targets and fifteen times it with
OVIS' twenty; their rectangles are a few hundred rows per mask, so the workers neither fill nor hand over pixels.

On the CPU the rectangles are painted by a compiled loop; elsewhere by corner marks and two cumulative sums (one
kernel each, no loop over rectangles). Both equal the masks the worker would have made (tests/data/test_mask_rects.py).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

__all__ = ["paint_rects", "paint_rows"]


@numba.njit(cache=True, nogil=True)
def paint_rows(rects, out):  # pragma: no cover
    """out[q, i0:i1, j0:j1] = True for every row (q, i0, i1, j0, j1) of `rects` (bool out [Q, H, W], C order)."""
    for r in range(rects.shape[0]):
        q, i0, i1, j0, j1 = rects[r, 0], rects[r, 1], rects[r, 2], rects[r, 3], rects[r, 4]
        for i in range(i0, i1):
            for j in range(j0, j1):
                out[q, i, j] = True


def paint_rects(rects: torch.Tensor, k: int, t: int, height: int, width: int,
                device: torch.device | str | None = None, *, compiled: bool | None = None) -> torch.Tensor:
    """bool [k, t, height, width] on `device` (default: the rectangles'), True inside every rectangle of `rects`
    (int [R, 5]: k * t + t index, i0, i1, j0, j1). `compiled` (default: on the CPU) paints with the compiled loop;
    otherwise with torch ops on the device."""
    device = torch.device(device) if device is not None else rects.device
    if rects.dim() != 2 or rects.shape[1] != 5:
        raise ValueError(f"paint_rects: rects must be [R, 5], got {tuple(rects.shape)}")
    if rects.shape[0]:
        lo, hi = rects.amin(0).tolist(), rects.amax(0).tolist()
        if lo[0] < 0 or hi[0] >= k * t or min(lo[1:]) < 0 or max(hi[1], hi[2]) > height or max(hi[3], hi[4]) > width:
            raise ValueError(f"paint_rects: rectangles outside {k} x {t} masks of {height}x{width} "
                             f"(min {lo}, max {hi})")
        if bool((rects[:, 2] < rects[:, 1]).any() or (rects[:, 4] < rects[:, 3]).any()):
            raise ValueError("paint_rects: rectangles with i1 < i0 or j1 < j0")
    if compiled is None:
        compiled = device.type == "cpu"
    if compiled:
        out = np.zeros((k * t, height, width), dtype=bool)
        paint_rows(rects.cpu().numpy(), out)
        return torch.from_numpy(out).view(k, t, height, width).to(device)
    r = rects.to(device=device, dtype=torch.int64)
    q, i0, i1, j0, j1 = r.unbind(1)
    marks = torch.zeros((k * t, height + 1, width + 1), dtype=torch.int32, device=device)
    ones = torch.ones(len(r), dtype=torch.int32, device=device)
    for rows, cols, sign in ((i0, j0, 1), (i0, j1, -1), (i1, j0, -1), (i1, j1, 1)):
        marks.index_put_((q, rows, cols), ones * sign, accumulate=True)
    covered = marks.cumsum_(1).cumsum_(2)[:, :height, :width] > 0
    return covered.view(k, t, height, width)
