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


def label_boundaries(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Label map int [H, W] -> {label (non-zero): sorted flat indices of its DAVIS boundary pixels}."""
    h, w = labels.shape
    flat = labels.reshape(-1)
    idx_parts, lab_parts = [], []
    right = np.zeros((h, w), dtype=bool)
    right[:, :-1] = labels[:, :-1] != labels[:, 1:]
    down = np.zeros((h, w), dtype=bool)
    down[:-1, :] = labels[:-1, :] != labels[1:, :]
    diag = np.zeros((h, w), dtype=bool)
    diag[:-1, :-1] = labels[:-1, :-1] != labels[1:, 1:]
    for changed, offset in ((right, 1), (down, w), (diag, w + 1)):
        p = np.flatnonzero(changed)
        idx_parts += [p, p]
        lab_parts += [flat[p], flat[p + offset]]
    idx = np.concatenate(idx_parts)
    lab = np.concatenate(lab_parts).astype(np.int64)
    keep = lab != 0
    key = np.unique(lab[keep] * (h * w) + idx[keep])
    lab_sorted, pix = key // (h * w), key % (h * w)
    uniq, starts = np.unique(lab_sorted, return_index=True)
    ends = np.append(starts[1:], len(key))
    return {int(k): pix[s:e] for k, s, e in zip(uniq, starts, ends)}


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

    b_gt, b_pred = label_boundaries(gt_labels), label_boundaries(pred_labels)
    empty = np.zeros(0, dtype=np.int64)
    footprint = disk(radius)
    dil_gt: dict[int, _Dilated] = {}
    dil_pred: dict[int, _Dilated] = {}
    f = np.zeros(len(pi))
    for n, (p_id, g_id) in enumerate(zip(p_ids.tolist(), g_ids.tolist())):
        bp, bg = b_pred.get(p_id, empty), b_gt.get(g_id, empty)
        fg_hits = gt_hits = 0
        if len(bp) and len(bg):
            if g_id not in dil_gt:
                dil_gt[g_id] = _Dilated(bg, shape, footprint, radius)
            if p_id not in dil_pred:
                dil_pred[p_id] = _Dilated(bp, shape, footprint, radius)
            fg_hits = dil_gt[g_id].count_hits(bp)
            gt_hits = dil_pred[p_id].count_hits(bg)
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
