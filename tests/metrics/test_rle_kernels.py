"""`_rle.DecodedRLEs` (compiled COCO RLE decoding, areas, pair intersections) and `same_group_pairs` against
pycocotools and brute force; malformed strings raise naming the mask."""

from __future__ import annotations

import re

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from vidseg.data.records import AnnotationFormatError, TrackPrediction, VideoPrediction
from vidseg.metrics._rle import DecodedRLEs, same_group_pairs
from vidseg.metrics.ytvis_ap import YTVISMeanAP


def _masks(rng: np.random.Generator, h: int, w: int, n: int) -> list[np.ndarray]:
    """Random blobs plus the edge cases: empty, full, first pixel, last pixel, one column, noise."""
    yy, xx = np.mgrid[:h, :w]
    out = []
    for _ in range(n):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1, max(h, w) / 2)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        m ^= rng.random((h, w)) < 0.05
        out.append(m)
    first, last, col = np.zeros((h, w), bool), np.zeros((h, w), bool), np.zeros((h, w), bool)
    first[0, 0], last[-1, -1], col[:, w // 2] = True, True, True
    return out + [np.zeros((h, w), bool), np.ones((h, w), bool), first, last, col, rng.random((h, w)) < 0.5]


def _encode(m: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))


@pytest.mark.parametrize("seed,h,w", [(0, 37, 53), (1, 480, 854), (2, 1, 7)])
def test_areas_and_intersections_equal_pycocotools_and_brute_force(seed, h, w):
    rng = np.random.default_rng(seed)
    masks = _masks(rng, h, w, 12)
    rles = [_encode(m) for m in masks]
    dec = DecodedRLEs(rles, h, w)
    dec.check(str)
    np.testing.assert_array_equal(dec.area, np.asarray(mask_utils.area(rles), np.int64))
    np.testing.assert_array_equal(dec.area, [m.sum() for m in masks])
    pa, pb = (x.ravel() for x in np.meshgrid(np.arange(len(masks)), np.arange(len(masks)), indexing="ij"))
    expected = [int((masks[a] & masks[b]).sum()) for a, b in zip(pa, pb)]
    np.testing.assert_array_equal(dec.intersections(pa, pb), expected)
    # pycocotools' IoU from the same strings, for pairs with a non-empty union
    iou = np.asarray(mask_utils.iou(rles, rles, [0] * len(rles))).ravel()
    union = dec.area[pa] + dec.area[pb] - np.asarray(expected)
    ok = union > 0
    np.testing.assert_allclose(np.asarray(expected)[ok] / union[ok], iou[ok], rtol=0, atol=1e-12)


def test_str_bytes_and_uncompressed_counts_decode_alike():
    rng = np.random.default_rng(3)
    masks = _masks(rng, 20, 30, 4)
    as_bytes = [_encode(m) for m in masks]
    as_str = [{"size": r["size"], "counts": r["counts"].decode()} for r in as_bytes]
    uncompressed = []
    for m in masks:
        flat = m.ravel(order="F").astype(np.int8)
        change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])) != 0)
        uncompressed.append({"size": [20, 30], "counts": np.diff(np.concatenate([[0], change])).tolist()})
    ref = DecodedRLEs(as_bytes, 20, 30)
    for other in (as_str, uncompressed, as_str[:2] + as_bytes[2:]):
        dec = DecodedRLEs(other, 20, 30)
        np.testing.assert_array_equal(dec.area, ref.area)
        np.testing.assert_array_equal(dec.runs, ref.runs)


@pytest.mark.parametrize(
    "counts,size,problem",
    [
        ("0P", [2, 2], "ends inside a count"),  # continuation bit on the last char
        ("A", [2, 2], "negative run length"),  # one char with the sign bit: -31
        (None, [4, 6], "sum is not height*width"),  # a 4x5 mask declared 4x6
        ("0 5", [2, 2], "character outside"),  # a space (32)
        ("0é5", [2, 2], "character outside"),  # non-ASCII text
        ("0p", [2, 2], "character outside"),  # 'p' (112): one past the alphabet
    ],
)
def test_malformed_strings_raise_naming_the_mask(counts, size, problem):
    good = _encode(np.eye(4, 5, dtype=bool))
    bad = {"size": size, "counts": good["counts"] if counts is None else counts}
    dec = DecodedRLEs([good if size == [4, 5] else _encode(np.eye(*size, dtype=bool)), bad], *size)
    assert dec.status[0] == 0 and dec.status[1] != 0
    with pytest.raises(AnnotationFormatError, match=rf"mask #1: RLE counts string .*{re.escape(problem)}"):
        dec.check(lambda i: f"mask #{i}")


def test_ytvis_update_names_the_malformed_prediction():
    from vidseg.data.records import FrameAnnotation, FrameSource, TrackInfo, VideoRecord

    m = np.zeros((8, 8), bool)
    m[2:5, 2:6] = True
    rle = _encode(m)
    gt = VideoRecord(
        "v1",
        FrameSource("images", names=["0", "1"]),
        8,
        8,
        tracks={1: TrackInfo(1, 1, False)},
        annotations=[FrameAnnotation(t, rles={1: rle}, track_ids=frozenset({1})) for t in range(2)],
    )
    bad = {"size": [8, 8], "counts": "0P"}
    pred = VideoPrediction("v1", 8, 8, ["0", "1"], [TrackPrediction(7, 1, 0.9, [rle, bad])])
    with pytest.raises(AnnotationFormatError, match=r"video 'v1' track 7 frame 1: RLE counts string ends inside"):
        YTVISMeanAP(category_ids=[1]).update(pred, gt)


def test_same_group_pairs_equal_brute_force():
    rng = np.random.default_rng(4)
    for _ in range(20):
        a, b = rng.integers(0, 6, rng.integers(0, 15)), rng.integers(0, 6, rng.integers(0, 15))
        pa, pb = same_group_pairs(a, b)
        expected = sorted((i, j) for i in range(len(a)) for j in range(len(b)) if a[i] == b[j])
        assert sorted(zip(pa.tolist(), pb.tolist())) == expected
        assert len(pa) == len(expected)
