"""The interleaved byte pair histogram (`_dense.byte_pair_histogram`) against np.bincount, on piecewise
constant maps like label maps, with the sub-bins on either side, on neither, and without OpenCV; the
vocabulary remap of a raw-id histogram against per-pixel lookups; segment pair tables for every instance
compaction path against np.unique."""

from __future__ import annotations

import numpy as np
import pytest

import vidseg.metrics._dense as dense
import vidseg.metrics._panoptic as panoptic
from _dense_references import make_gt_video
from vidseg.data.records import IGNORE_LABEL, Category, FrameLabels
from vidseg.metrics._dense import Scratch, TrackSlots, Vocabulary, byte_pair_histogram
from vidseg.metrics._panoptic import segment_pairs


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
    out = vocab.remap_histogram(hist)
    gi, pi = vocab.index(g, "g").astype(np.int64), vocab.index(p, "p").astype(np.int64)
    np.testing.assert_array_equal(out, np.bincount((gi * 5 + pi).ravel(), minlength=25).reshape(5, 5))
    hist[9, 0] += 1  # an unknown GT id
    assert vocab.remap_histogram(hist) is None
    hist[9, 0] -= 1
    hist[3, 1] += 1  # an unknown predicted id
    assert vocab.remap_histogram(hist) is None


@pytest.mark.parametrize(
    "ids",
    [
        [0, 1, 2, 3],  # low-byte lookup
        [0, 5, 261, 517],  # equal low bytes: lookup over the lane keys
        list(range(0, 600, 10)),  # 60 instances x 5 classes > 256 keys: uint16 keys
        [0, 7, 16_383],  # the largest id of the laned histogram
        [0, 16_384],  # beyond it: bincount
    ],
)
@pytest.mark.parametrize("use_cv2", [True, False])
def test_segment_pairs_instance_compaction(monkeypatch, ids, use_cv2):
    if not use_cv2:
        monkeypatch.setattr(dense, "cv2", None)
        monkeypatch.setattr(panoptic, "cv2", None)
    cats = [Category(0, "a", False), Category(1, "b", False), Category(2, "c", True), Category(3, "d", True)]
    rng = np.random.default_rng(len(ids))
    h, w = 30, 41
    g_sem = rng.choice([0, 1, 2, 3, IGNORE_LABEL], size=(h, w)).astype(np.int32)
    masks = {5: np.zeros((h, w), bool), 9: np.zeros((h, w), bool)}  # overlapping: the later one wins
    masks[5][2:10, 3:12] = True
    masks[9][6:20, 8:30] = True
    p_sem = blocky(rng, 4, (h, w)).astype(np.int32)
    p_inst = np.asarray(ids, np.int32)[blocky(rng, len(ids), (h, w))]
    vocab = Vocabulary(cats)
    slots = TrackSlots(make_gt_video("v", [g_sem], [np.zeros((h, w), np.int32)]))
    labels = FrameLabels(masks=masks, semantic=g_sem, void=None)
    got = segment_pairs(labels, p_sem, p_inst, vocab, slots, "w", Scratch())
    g_slot = np.zeros((h, w), np.int64)
    for tid, mask in masks.items():
        g_slot[mask] = slots.get(tid)
    keys = np.stack([g_slot, vocab.index(g_sem, "w").astype(np.int64), p_inst.astype(np.int64),
                     vocab.index(p_sem, "w").astype(np.int64)]).reshape(4, -1)  # fmt: skip
    uniq, counts = np.unique(keys, axis=1, return_counts=True)
    order = np.lexsort(tuple(got[:4])[::-1])
    np.testing.assert_array_equal(np.stack(got[:4])[:, order], uniq)
    np.testing.assert_array_equal(got[4][order], counts)
