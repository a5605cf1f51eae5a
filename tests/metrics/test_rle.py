"""pycocotools' C RLE routines through ctypes (`vidseg.metrics._rle`) against its Python API: concatenated
decoding vs per-mask decoding, areas, IoUs; grouped IoUs + areas with and without the C path; YouTube-VIS
AP equal with the C path switched off."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

import vidseg.metrics._rle as rle_c
from _metric_references import ytvis_video
from vidseg.metrics._common import grouped_rle_ious_and_areas
from vidseg.metrics.ytvis_ap import YTVISMeanAP

pytestmark = pytest.mark.skipif(not rle_c.available(), reason="pycocotools' C routines not loadable here")


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


def runs_to_mask(counts: np.ndarray, h: int, w: int) -> np.ndarray:
    flat = np.repeat(np.arange(len(counts)) % 2, counts.astype(np.int64)).astype(np.uint8)
    return flat.reshape(w, h).T


@pytest.mark.parametrize("seed", range(3))
def test_concatenated_decoding_equals_pycocotools(seed):
    rng = np.random.default_rng(seed)
    rles = odd_masks(rng, 60)
    decoded = rle_c.decode_counts([r["counts"] for r in rles])
    assert decoded is not None
    buf, first, num = decoded
    for i, r in enumerate(rles):
        np.testing.assert_array_equal(runs_to_mask(buf[first[i] : first[i] + num[i]], 23, 31), mask_utils.decode(r))
    structs = rle_c.make_structs(buf, first, num, np.full(60, 23), np.full(60, 31))
    np.testing.assert_array_equal(rle_c.areas(structs), np.asarray(mask_utils.area(rles), np.int64))
    ours = rle_c.ious(structs[:25], structs[25:])
    np.testing.assert_array_equal(ours, np.asarray(mask_utils.iou(rles[:25], rles[25:], [0] * 35)).reshape(25, 35))


def test_malformed_strings_are_left_to_the_python_api():
    assert rle_c.decode_counts(["0a"]) is None  # 'a' - 48 has the continuation bit: the count does not end
    assert rle_c.decode_counts([[1, 2, 3]]) is None  # uncompressed counts
    buf, first, num = rle_c.decode_counts([])
    assert len(first) == len(num) == 0


@pytest.mark.parametrize(("use_c", "one_call_cells"), [(True, 0), (True, 1 << 16), (False, 0)])
def test_grouped_ious_and_areas(monkeypatch, use_c, one_call_cells):
    if not use_c:
        monkeypatch.setattr(rle_c, "decode_counts", lambda *_a, **_k: None)
    rng = np.random.default_rng(5)
    d, g = odd_masks(rng, 40), odd_masks(rng, 25)
    d_group, g_group = rng.integers(0, 6, 40), rng.integers(0, 8, 25)
    pd, pg, iou, d_area, g_area = grouped_rle_ious_and_areas(
        d, d_group, g, g_group, max_cells=16, one_call_cells=one_call_cells
    )
    np.testing.assert_array_equal(d_area, np.asarray(mask_utils.area(d), np.int64))
    np.testing.assert_array_equal(g_area, np.asarray(mask_utils.area(g), np.int64))
    got = {(int(a), int(b)): float(v) for a, b, v in zip(pd, pg, iou)}
    expected = {}
    for k in range(8):
        di, gi = np.flatnonzero(d_group == k), np.flatnonzero(g_group == k)
        if len(di) and len(gi):
            ref = np.asarray(mask_utils.iou([d[i] for i in di], [g[j] for j in gi], [0] * len(gi))).reshape(len(di), -1)
            expected.update({(int(a), int(b)): float(ref[x, y]) for x, a in enumerate(di) for y, b in enumerate(gi)
                             if ref[x, y] > 0})  # fmt: skip
    assert got == expected
    assert len(got) > 10


def test_ytvis_equal_without_c_routines(monkeypatch):
    rng = np.random.default_rng(11)
    data = [ytvis_video(rng, vid, 40, 56, 6) for vid in range(1, 5)]

    def run() -> dict:
        metric = YTVISMeanAP(category_ids=[1, 2, 3])
        for record, pred in data:
            metric.update(pred, record)
        return metric.compute()

    with_c = run()
    monkeypatch.setattr(rle_c, "decode_counts", lambda *_a, **_k: None)
    assert run() == with_c
