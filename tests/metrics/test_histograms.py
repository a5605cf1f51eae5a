"""The interleaved byte pair histogram (`_dense.byte_pair_histogram`) against np.bincount, on piecewise
constant maps like label maps, with the sub-bins on either side, on neither, and without OpenCV; the
vocabulary remap of a raw-id histogram against per-pixel lookups."""

from __future__ import annotations

import numpy as np
import pytest

import vidseg.metrics._dense as dense
from vidseg.data.records import IGNORE_LABEL, Category
from vidseg.metrics._dense import Scratch, Vocabulary, byte_pair_histogram


def blocky(rng: np.random.Generator, top: int, shape: tuple[int, int] = (45, 61)) -> np.ndarray:
    """Piecewise constant uint8 map with values < top (blocks plus sparse noise)."""
    base = np.kron(rng.integers(0, top, (5, 7)), np.ones((10, 10), np.int64))[: shape[0], : shape[1]]
    base = np.pad(base, ((0, shape[0] - base.shape[0]), (0, shape[1] - base.shape[1])), mode="edge")
    noise = rng.random(shape) < 0.05
    base[noise] = rng.integers(0, top, int(noise.sum()))
    return base.astype(np.uint8)


@pytest.mark.parametrize("use_cv2", [True, False])
@pytest.mark.parametrize(("ra", "rb"), [(256, 20), (9, 200), (100, 120), (1, 1), (64, 64)])
def test_byte_pair_histogram_equals_bincount(monkeypatch, use_cv2, ra, rb):
    if not use_cv2:
        monkeypatch.setattr(dense, "cv2", None)
    rng = np.random.default_rng(ra * 1000 + rb)
    a, b = blocky(rng, ra), blocky(rng, rb)
    expected = np.bincount((a.astype(np.int64) * rb + b).ravel(), minlength=ra * rb).reshape(ra, rb)
    scratch = Scratch()
    for _ in range(2):  # the second call reuses the scratch arrays
        got = byte_pair_histogram(a, b, ra, rb, scratch)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, expected)


def test_remap_histogram_equals_per_pixel_lookup():
    cats = [Category(i, f"c{i}", False) for i in (3, 0, 7, 5)]
    vocab = Vocabulary(cats)
    rng = np.random.default_rng(2)
    ids = np.array([0, 3, 5, 7, IGNORE_LABEL])
    g, p = ids[rng.integers(0, 5, (30, 40))], ids[rng.integers(0, 4, (30, 40))]
    hist = np.bincount((g * 256 + p).ravel(), minlength=256 * 256).reshape(256, 256)
    out, _, _ = vocab.remap_histogram(hist)
    gi, pi = vocab.index(g, "g").astype(np.int64), vocab.index(p, "p").astype(np.int64)
    np.testing.assert_array_equal(out, np.bincount((gi * 5 + pi).ravel(), minlength=25).reshape(5, 5))
