"""The metrics' fast building blocks against straightforward computations: pair histograms (OpenCV and
bincount) vs np.bincount, crop boundaries vs DAVIS' full-frame _seg2bmap, crop J&F at the frame edges vs
vos-benchmark, vocabulary lookups vs Vocabulary.index, segment pair tables vs np.unique, and every dense metric
with OpenCV switched off (grouped RLE IoUs: test_grouped_rle.py)."""

from __future__ import annotations

import numpy as np
import pytest
from vos_benchmark.evaluator import Evaluator
from vos_benchmark.utils import _seg2bmap

import vidseg.metrics._dense as dense
from _dense_references import make_gt_video, make_prediction, random_panoptic_video
from vidseg.data.records import IGNORE_LABEL, AnnotationFormatError, Category, FrameLabels
from vidseg.metrics._boundary import crop_boundary, crop_j_and_f, disk
from vidseg.metrics._dense import Scratch, TrackSlots, Vocabulary, pair_histogram
from vidseg.metrics._panoptic import fast_index, segment_pairs
from vidseg.metrics.miou import SemanticMIoU
from vidseg.metrics.stq import STQ
from vidseg.metrics.vpq import VPQ

CATS = [Category(0, "a", False), Category(1, "b", False), Category(2, "c", True), Category(3, "d", True)]


@pytest.mark.parametrize("use_cv2", [True, False])
@pytest.mark.parametrize(("ra", "rb"), [(7, 20), (256, 3), (300, 1715), (5, 70000)])
def test_pair_histogram_equals_bincount(monkeypatch, use_cv2, ra, rb):
    if not use_cv2:
        monkeypatch.setattr(dense, "cv2", None)
    rng = np.random.default_rng(ra)
    a = rng.integers(0, ra, (37, 53)).astype(np.int32)
    b = rng.integers(0, rb, (37, 53)).astype(np.uint16 if rb <= 1 << 16 else np.int64)
    expected = np.bincount((a.astype(np.int64) * rb + b).ravel(), minlength=ra * rb).reshape(ra, rb)
    np.testing.assert_array_equal(pair_histogram(a, b, ra, rb, Scratch()), expected)


@pytest.mark.parametrize("seed", range(4))
def test_crop_boundary_equals_full_frame_seg2bmap(seed):
    """Objects touching every frame edge; crops = object box + 1 px margin, clipped to the frame."""
    rng = np.random.default_rng(seed)
    h, w = 24, 31
    seg = np.zeros((h, w), bool)
    y0, x0 = rng.integers(0, 6), rng.integers(0, 6)
    y1, x1 = rng.integers(h - 6, h + 1), rng.integers(w - 6, w + 1)
    seg[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.7
    full = _seg2bmap(seg)
    rows, cols = np.flatnonzero(seg.any(1)), np.flatnonzero(seg.any(0))
    cy0, cy1 = max(rows[0] - 1, 0), min(rows[-1] + 2, h)
    cx0, cx1 = max(cols[0] - 1, 0), min(cols[-1] + 2, w)
    crop = crop_boundary(seg[cy0:cy1, cx0:cx1], cy1 == h, cx1 == w)
    np.testing.assert_array_equal(crop, full[cy0:cy1, cx0:cx1])
    assert full.sum() == crop.sum()  # nothing of the boundary lies outside the crop


def test_crop_j_and_f_at_frame_edges_equal_vos_benchmark():
    rng = np.random.default_rng(3)
    h, w = 40, 60
    gt = np.zeros((h, w), np.uint8)
    gt[25:, 40:] = 1  # bottom-right corner object
    gt[:10, :12] = 2
    pred = np.zeros((h, w), np.uint8)
    pred[27:, 38:] = 1
    pred[:8, 2:15] = 2
    pred[rng.random((h, w)) < 0.02] = 0
    ev = Evaluator(boundary=0.008)
    ev.feed_frame(pred, gt)
    footprint = disk(int(np.ceil(0.008 * np.linalg.norm((h, w)))))
    for k in (1, 2):
        g, p = gt == k, pred == k
        rows, cols = np.flatnonzero((g | p).any(1)), np.flatnonzero((g | p).any(0))
        y0, y1 = max(rows[0] - 1, 0), min(rows[-1] + 2, h)
        x0, x1 = max(cols[0] - 1, 0), min(cols[-1] + 2, w)
        j, f = crop_j_and_f(g[y0:y1, x0:x1], p[y0:y1, x0:x1], y1 == h, x1 == w, footprint)
        assert j == pytest.approx(ev.object_iou[k][0], abs=1e-12)
        assert f == pytest.approx(ev.boundary_f[k][0], abs=1e-12)
        assert 0 < f < 1 and 0 < j < 1


@pytest.mark.parametrize("use_cv2", [True, False])
@pytest.mark.parametrize("ids", [[0, 1, 2, 3], [3, 7, 100, 12]])
def test_fast_index_equals_vocabulary_index(monkeypatch, use_cv2, ids):
    import vidseg.metrics._panoptic as panoptic

    if not use_cv2:
        monkeypatch.setattr(panoptic, "cv2", None)
    vocab = Vocabulary([Category(i, str(i)) for i in ids])
    rng = np.random.default_rng(1)
    sem = rng.choice(ids + [IGNORE_LABEL], size=(20, 30)).astype(np.int32)
    np.testing.assert_array_equal(fast_index(vocab, sem, "w", Scratch(), "x"), vocab.index(sem, "w"))
    sem[4, 5] = 55
    with pytest.raises(AnnotationFormatError, match="semantic id 55"):
        fast_index(vocab, sem, "w", Scratch(), "x")
    sem[4, 5] = -3
    with pytest.raises(AnnotationFormatError, match="semantic id -3"):
        fast_index(vocab, sem, "w", Scratch(), "x")


@pytest.mark.parametrize("inst_scale", [1, 1000, 100_000])
def test_segment_pairs_equal_unique_counts(inst_scale):
    """Instance ids used directly, compacted through a histogram, and through np.unique (> 2**16 ids)."""
    rng = np.random.default_rng(inst_scale)
    h, w = 24, 32
    g_sem = rng.choice([0, 1, 2, 3, IGNORE_LABEL], size=(h, w)).astype(np.int32)
    masks = {5: np.zeros((h, w), bool), 9: np.zeros((h, w), bool)}
    masks[5][2:10, 3:12] = True
    masks[9][12:20, 15:30] = True
    p_sem = rng.choice([0, 1, 2, 3, IGNORE_LABEL], size=(h, w)).astype(np.int32)
    p_inst = (rng.integers(0, 4, (h, w)) * inst_scale).astype(np.int32)
    vocab = Vocabulary(CATS)
    slots = TrackSlots(make_gt_video("v", [g_sem], [np.zeros((h, w), np.int32)]))
    labels = FrameLabels(masks=masks, semantic=g_sem, void=g_sem == IGNORE_LABEL)
    got = segment_pairs(labels, p_sem, p_inst, vocab, slots, "w", Scratch())
    g_slot = np.zeros((h, w), np.int64)
    for tid, m in masks.items():
        g_slot[m] = slots.get(tid)
    g_cls = vocab.index(g_sem, "w").astype(np.int64)
    p_cls = vocab.index(p_sem, "w").astype(np.int64)
    keys = np.stack([g_slot, g_cls, p_inst.astype(np.int64), p_cls]).reshape(4, -1)
    uniq, counts = np.unique(keys, axis=1, return_counts=True)
    order = np.lexsort(tuple(got[:4])[::-1])
    np.testing.assert_array_equal(np.stack(got[:4])[:, order], uniq)
    np.testing.assert_array_equal(got[4][order], counts)


def test_dense_metrics_without_opencv_equal_with(monkeypatch):
    rng = np.random.default_rng(7)
    data = [random_panoptic_video(rng, 5, 40, 56, CATS, num_tracks=3) for _ in range(2)]
    gts = [make_gt_video(f"v{i}", d[0], d[1]) for i, d in enumerate(data)]
    preds = [make_prediction(f"v{i}", d[2], d[3], g.frames.names) for i, (d, g) in enumerate(zip(data, gts))]
    sem_preds = [make_prediction(f"v{i}", [np.where(s == IGNORE_LABEL, 0, s) for s in d[2]], None, g.frames.names)
                 for i, (d, g) in enumerate(zip(data, gts))]  # fmt: skip

    def run() -> list[dict]:
        out = []
        for metric, ps in ((VPQ(CATS, windows=(1, 2)), preds), (STQ(CATS), preds),
                           (SemanticMIoU(CATS, vc_windows=(2, 3)), sem_preds)):  # fmt: skip
            for p, g in zip(ps, gts):
                metric.update(p, g)
            out.append(metric.compute())
        return out

    with_cv2 = run()
    import vidseg.metrics._panoptic as panoptic

    monkeypatch.setattr(dense, "cv2", None)
    monkeypatch.setattr(panoptic, "cv2", None)
    without = run()
    for a, b in zip(with_cv2, without):
        assert a == pytest.approx(b, abs=1e-12, nan_ok=True)


def test_video_consistency_of_a_long_video_equals_reference():
    """140 annotated frames: the last-change stamps need more than int8."""
    from _dense_references import reference_vc_windows

    rng = np.random.default_rng(2)
    cats = [Category(i, str(i), False) for i in range(4)]
    gs = [np.repeat(rng.integers(0, 4, (1, 10)), 8, axis=0).astype(np.int32) for _ in range(140)]
    for t in range(1, 140):  # slowly changing GT, noisier prediction
        keep = rng.random((8, 10)) < 0.97
        gs[t] = np.where(keep, gs[t - 1], gs[t]).astype(np.int32)
    ps = [np.where(rng.random((8, 10)) < 0.05, rng.integers(0, 4, (8, 10)), g).astype(np.int32) for g in gs]
    gt = make_gt_video("long", gs, [np.zeros_like(g) for g in gs])
    metric = SemanticMIoU(cats, vc_windows=(8, 130))
    metric.update(make_prediction("long", ps, None, gt.frames.names), gt)
    res = metric.compute()
    for n in (8, 130):
        assert res[f"mVC_{n}"] == pytest.approx(float(np.nanmean(reference_vc_windows(gs, ps, n))), abs=1e-12)
