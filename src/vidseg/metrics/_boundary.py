"""DAVIS region (J) and boundary (F) measures for all objects of a frame at once, from label maps.

The boundary of object k is DAVIS' `_seg2bmap(L == k)` (a pixel differs from its right, lower or lower-right
neighbour; last row: right only; last column: lower only; bottom-right corner never). All objects' boundaries
come from one pass over the label map. F's tolerance is a dilation with `skimage.morphology.disk(r)`,
r = ceil(0.008 * diagonal); each boundary is dilated once, inside its bounding box grown by r (cv2 if
installed, else scipy), which gives the same values as a full-frame dilation at a fraction of the cost.
"""

from __future__ import annotations

import numpy as np

try:  # opencv is optional (dev extra); scipy is the fallback
    import cv2
except ImportError:  # pragma: no cover - exercised only without opencv
    cv2 = None
from scipy import ndimage


def boundary_radius(height: int, width: int, bound_th: float = 0.008) -> int:
    """DAVIS tolerance: bound_th itself when >= 1, else ceil(bound_th * sqrt(H^2 + W^2))."""
    if bound_th >= 1:
        return int(bound_th)
    return int(np.ceil(bound_th * np.linalg.norm((height, width))))


def disk(radius: int) -> np.ndarray:
    """uint8 disk footprint identical to `skimage.morphology.disk(radius)` (x^2 + y^2 <= r^2)."""
    axis = np.arange(-radius, radius + 1)
    return ((axis[None, :] ** 2 + axis[:, None] ** 2) <= radius**2).astype(np.uint8)


def label_boundaries(labels: np.ndarray, objects: np.ndarray) -> dict[int, np.ndarray]:
    """Label map int [H, W] -> {object id: sorted flat indices of its DAVIS boundary}, for `objects`.

    B_k(p) = OR over the right / lower / lower-right neighbour n of p: (L[p] == k) xor (L[n] == k), only
    where n exists (last row: right only; last column: lower only). Only pixels whose label differs from a
    neighbour can be boundary pixels, so the per-object test runs on those few pixels."""
    h, w = labels.shape
    flat = labels.reshape(-1)
    right = np.zeros((h, w), dtype=bool)
    right[:, :-1] = labels[:, :-1] != labels[:, 1:]
    down = np.zeros((h, w), dtype=bool)
    down[:-1, :] = labels[:-1, :] != labels[1:, :]
    diag = np.zeros((h, w), dtype=bool)
    diag[:-1, :-1] = labels[:-1, :-1] != labels[1:, 1:]
    changed = right | down | diag
    pix = np.flatnonzero(changed)
    last = h * w - 1
    here = flat[pix]
    neighbours = [
        (right.reshape(-1)[pix], flat[np.minimum(pix + 1, last)]),
        (down.reshape(-1)[pix], flat[np.minimum(pix + w, last)]),
        (diag.reshape(-1)[pix], flat[np.minimum(pix + w + 1, last)]),
    ]
    out: dict[int, np.ndarray] = {}
    for k in np.asarray(objects).tolist():
        is_k = here == k
        member = np.zeros(len(pix), dtype=bool)
        for differs, lab in neighbours:
            member |= differs & (is_k | (lab == k))
        out[int(k)] = pix[member]
    return out


def disk_spans(radius: int) -> np.ndarray:
    """Half widths of the disk's rows (dy = -r..r): the disk is {(dy, dx): |dx| <= spans[dy + r]}."""
    return ((disk(radius).sum(axis=1) - 1) // 2).astype(np.int64)


def count_near(query: np.ndarray, ref: np.ndarray, shape: tuple[int, int], radius: int) -> int:
    """How many `query` pixels lie in the disk dilation of `ref` (both sorted flat indices y * W + x).

    Equal to dilating `ref` with `disk(radius)` and counting `query` pixels on it. Rows dy = 0, +-1, ... are
    searched in the sorted `ref` for the pixels not matched yet (most match within a few rows); when the
    remaining search would cost more than dilating a crop around `ref`, the crop is dilated instead."""
    if len(query) == 0 or len(ref) == 0:
        return 0
    h, w = shape
    spans = disk_spans(radius)
    qy, qx = np.divmod(query, w)
    rx = ref % w
    y0, y1 = int(ref[0] // w), int(ref[-1] // w)
    crop_area = (min(y1 + radius + 1, h) - max(y0 - radius, 0)) * (
        min(int(rx.max()) + radius + 1, w) - max(int(rx.min()) - radius, 0)
    )
    todo = np.arange(len(query))
    hits = 0
    order = sorted(range(-radius, radius + 1), key=abs)
    for i, dy in enumerate(order):
        if i >= 3 and len(todo) * (len(order) - i) * 8 > crop_area:  # a dilation is cheaper for the rest
            return hits + _Dilated(ref, shape, disk(radius), radius).count_hits(query[todo])
        base = (qy[todo] + dy) * w
        x = qx[todo]
        lo = base + np.maximum(x - spans[dy + radius], 0)
        hi = base + np.minimum(x + spans[dy + radius], w - 1)
        found = np.searchsorted(ref, hi, "right") > np.searchsorted(ref, lo, "left")
        hits += int(found.sum())
        todo = todo[~found]
        if len(todo) == 0:
            break
    return hits


class _Dilated:
    """One boundary dilated by the disk inside its bounding box grown by the radius (clipped to the frame)."""

    def __init__(self, pix: np.ndarray, shape: tuple[int, int], footprint: np.ndarray, radius: int):
        h, w = shape
        self.width = w
        ys, xs = pix // w, pix % w
        self.y0, self.x0 = max(int(ys.min()) - radius, 0), max(int(xs.min()) - radius, 0)
        y1, x1 = min(int(ys.max()) + radius + 1, h), min(int(xs.max()) + radius + 1, w)
        crop = np.zeros((y1 - self.y0, x1 - self.x0), dtype=np.uint8)
        crop[ys - self.y0, xs - self.x0] = 1
        if cv2 is not None:
            self.crop = cv2.dilate(crop, footprint).astype(bool)
        else:
            self.crop = ndimage.binary_dilation(crop.astype(bool), structure=footprint.astype(bool))

    def count_hits(self, pix: np.ndarray) -> int:
        """How many of the given pixels (flat indices) lie in the dilated boundary."""
        ys, xs = pix // self.width - self.y0, pix % self.width - self.x0
        ch, cw = self.crop.shape
        inside = (ys >= 0) & (ys < ch) & (xs >= 0) & (xs < cw)
        return int(self.crop[ys[inside], xs[inside]].sum())


def f_measure(n_fg: int, n_gt: int, fg_hits: int, gt_hits: int) -> float:
    """DAVIS boundary F from boundary sizes and matched counts (same operations and edge cases)."""
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = fg_hits / float(n_fg)
        recall = gt_hits / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def frame_j_and_f(
    gt_labels: np.ndarray,
    pred_labels: np.ndarray,
    gt_objects: np.ndarray,
    pred_objects: np.ndarray,
    pairs: np.ndarray | None,
    radius: int,
) -> tuple[np.ndarray, np.ndarray]:
    """J and F of one frame for (pred object, GT object) pairs.

    gt_labels/pred_labels: int [H, W] label maps (0 = background). gt_objects/pred_objects: the ids to score.
    pairs: [P, 2] (pred index, gt index) or None for all pairs. Returns J and F, [P] or [K_pred, K_gt].
    J = |P & G| / |P | G| (1 when the union is empty); F as in DAVIS `f_measure`.
    """
    shape = gt_labels.shape
    n_pred_lab = int(max(pred_labels.max(initial=0), pred_objects.max(initial=0))) + 1
    n_gt_lab = int(max(gt_labels.max(initial=0), gt_objects.max(initial=0))) + 1
    conf = np.bincount(
        gt_labels.reshape(-1).astype(np.int64) * n_pred_lab + pred_labels.reshape(-1),
        minlength=n_gt_lab * n_pred_lab,
    ).reshape(n_gt_lab, n_pred_lab)
    area_g, area_p = conf.sum(1), conf.sum(0)
    if pairs is None:
        pi, gi = np.meshgrid(np.arange(len(pred_objects)), np.arange(len(gt_objects)), indexing="ij")
        pi, gi = pi.reshape(-1), gi.reshape(-1)
    else:
        pi, gi = pairs[:, 0], pairs[:, 1]
    p_ids, g_ids = pred_objects[pi], gt_objects[gi]
    inter = conf[g_ids, p_ids]
    union = area_g[g_ids] + area_p[p_ids] - inter
    j = np.where(union == 0, 1.0, inter / np.maximum(union, 1))

    b_gt = label_boundaries(gt_labels, np.unique(g_ids))
    b_pred = label_boundaries(pred_labels, np.unique(p_ids))
    f = np.zeros(len(pi))
    for n, (p_id, g_id) in enumerate(zip(p_ids.tolist(), g_ids.tolist())):
        bp, bg = b_pred[p_id], b_gt[g_id]
        fg_hits = count_near(bp, bg, shape, radius)
        gt_hits = count_near(bg, bp, shape, radius)
        f[n] = f_measure(len(bp), len(bg), fg_hits, gt_hits)
    if pairs is None:
        return j.reshape(len(pred_objects), len(gt_objects)), f.reshape(len(pred_objects), len(gt_objects))
    return j, f


def davis_statistics(values: np.ndarray) -> tuple[float, float, float]:
    """DAVIS `db_statistics` of one object's per-frame values: (mean, recall (> 0.5), decay over 4 bins).
    The decay bin indices are cast to uint8 as in the official code (sequences of <= 256 scored frames)."""
    with np.errstate(invalid="ignore"):
        mean = float(np.nanmean(values))
        recall = float(np.nanmean(values > 0.5))
    n_bins = 4
    ids = (np.round(np.linspace(1, len(values), n_bins + 1) + 1e-10) - 1).astype(np.uint8)
    bins = [values[ids[i] : ids[i + 1] + 1] for i in range(n_bins)]
    decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return mean, recall, decay


def crop_boundary(seg: np.ndarray, at_bottom: bool, at_right: bool) -> np.ndarray:
    """DAVIS `_seg2bmap` of a bool mask crop, for a crop whose outside holds no mask pixel: right / lower /
    lower-right neighbours outside the crop are empty, except at the frame's own last row / column
    (`at_bottom` / `at_right`), where DAVIS' edge rules apply (last row: right neighbour only; last column:
    lower neighbour only; bottom-right corner never)."""
    h, w = seg.shape
    padded = np.zeros((h + 1, w + 1), dtype=bool)
    padded[:h, :w] = seg
    b = seg != padded[:h, 1:]
    b |= seg != padded[1:, :w]
    b |= seg != padded[1:, 1:]
    if at_bottom:
        b[-1, :] = seg[-1, :] != padded[h - 1, 1:]
    if at_right:
        b[:, -1] = seg[:, -1] != padded[1:, w - 1]
    if at_bottom and at_right:
        b[-1, -1] = False
    return b


def _dilate(mask: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    if cv2 is not None:
        return cv2.dilate(mask.view(np.uint8), footprint).view(bool)
    return ndimage.binary_dilation(mask, structure=footprint.astype(bool))


def crop_j_and_f(
    gt_mask: np.ndarray, pred_mask: np.ndarray, at_bottom: bool, at_right: bool, footprint: np.ndarray
) -> tuple[float, float]:
    """DAVIS J and F of one object from bool crops holding all of its GT and predicted pixels plus a
    1-pixel margin (where the frame allows): J = |P & G| / |P | G| (1 if both are empty); F from the crop
    boundaries, each dilated by `footprint` inside the crop (every boundary pixel is in the crop, so the
    counts equal a full-frame dilation's)."""
    inter = int(np.count_nonzero(gt_mask & pred_mask))
    union = int(np.count_nonzero(gt_mask)) + int(np.count_nonzero(pred_mask)) - inter
    j = 1.0 if union == 0 else inter / union
    b_gt = crop_boundary(gt_mask, at_bottom, at_right)
    b_pred = crop_boundary(pred_mask, at_bottom, at_right)
    n_gt, n_fg = int(np.count_nonzero(b_gt)), int(np.count_nonzero(b_pred))
    fg_hits = gt_hits = 0
    if n_gt and n_fg:
        fg_hits = int(np.count_nonzero(b_pred & _dilate(b_gt, footprint)))
        gt_hits = int(np.count_nonzero(b_gt & _dilate(b_pred, footprint)))
    return j, f_measure(n_fg, n_gt, fg_hits, gt_hits)
