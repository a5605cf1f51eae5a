"""Grouped RLE IoUs (`_common.grouped_rle_ious`, used by BURST HOTA) against one pycocotools call per group, on
random blobs, noise and the short cases (empty, full, one pixel), with str and bytes counts."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from vidseg.metrics._common import grouped_rle_ious


def enc(mask: np.ndarray, as_str: bool = True) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    counts = rle["counts"].decode("ascii") if as_str else rle["counts"]
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


def odd_masks(rng: np.random.Generator, n: int, h: int = 23, w: int = 31) -> list[dict]:
    """Random blobs and noise plus the short cases: empty, full, one pixel, first/last pixel set."""
    out = []
    for k in range(n):
        kind = k % 6
        m = np.zeros((h, w), bool)
        if kind == 0:
            m = rng.random((h, w)) < 0.4
        elif kind == 1:
            y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
            m[y : y + rng.integers(1, 12), x : x + rng.integers(1, 15)] = True
        elif kind == 2:
            m[:] = True
        elif kind == 3:
            m[0, 0] = True
        elif kind == 4:
            m[-1, -1] = True
        out.append(enc(m, as_str=bool(rng.random() < 0.5)))  # kind 5: empty
    return out


def per_group_ious(d: list[dict], d_group: np.ndarray, g: list[dict], g_group: np.ndarray) -> dict:
    """{(detection, ground truth): IoU} of every same-group pair, one pycocotools call per group (reference)."""
    expected = {}
    for k in np.union1d(d_group, g_group).tolist():
        di, gi = np.flatnonzero(d_group == k), np.flatnonzero(g_group == k)
        if len(di) and len(gi):
            ref = np.asarray(mask_utils.iou([d[i] for i in di], [g[j] for j in gi], [0] * len(gi))).reshape(len(di), -1)
            expected.update({(int(a), int(b)): float(ref[x, y]) for x, a in enumerate(di) for y, b in enumerate(gi)})
    return expected


def random_masks(rng: np.random.Generator, n: int, h: int = 30, w: int = 40) -> list[dict]:
    out = []
    for _ in range(n):
        m = np.zeros((h, w), bool)
        y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
        m[y : y + rng.integers(2, 15), x : x + rng.integers(2, 20)] = True
        if rng.random() < 0.2:
            m[:] = False  # an empty mask
        out.append(enc(m))
    return out


@pytest.mark.parametrize("max_cells", [1, 16, 4096])
def test_grouped_rle_ious_equal_per_group_calls(max_cells):
    rng = np.random.default_rng(0)
    d, g = random_masks(rng, 20) + odd_masks(rng, 20, 30, 40), random_masks(rng, 15) + odd_masks(rng, 10, 30, 40)
    d_group, g_group = rng.integers(0, 6, 40), rng.integers(0, 8, 25)  # groups 6, 7: GT only
    pd, pg, iou = grouped_rle_ious(d, d_group, g, g_group, max_cells=max_cells)
    got = {(int(a), int(b)): float(v) for a, b, v in zip(pd, pg, iou)}
    assert got == per_group_ious(d, d_group, g, g_group)
    assert np.all(np.diff(d_group[pd]) >= 0)  # grouped, in group order
    empty = grouped_rle_ious([], np.zeros(0, int), g, g_group)
    assert all(len(x) == 0 for x in empty)
