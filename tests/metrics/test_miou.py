"""VSPW mIoU and VC: hand-computed cases, classes absent from the GT, void, equality with the official-style
reference on random videos, perfect predictions, merging and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from _dense_references import make_dataset, make_gt_video, make_prediction, reference_miou, reference_vc_windows
from vidseg.data.records import IGNORE_LABEL, AnnotationFormatError, Category
from vidseg.metrics.miou import SemanticMIoU, from_records

CATS = [Category(i, f"class{i}", False) for i in range(4)]
V = IGNORE_LABEL


def _update(metric: SemanticMIoU, vid: str, gts: list[np.ndarray], preds: list[np.ndarray]) -> None:
    gt = make_gt_video(vid, gts, [np.zeros_like(g) for g in gts])
    metric.update(make_prediction(vid, preds, None, gt.frames.names), gt)


def test_miou_over_classes_present_in_gt() -> None:
    # GT [[0, 0, 1, 1], [void, void, 1, 1]] (void = VSPW's 0 "others" and 255, both mapped to 255 by the
    # reader); prediction [[0, 2, 1, 1], [3, 3, 1, 0]].
    # Labelled pixels: 0->0, 0->2, 1->1 x3, 1->0. Class 0: TP 1, FN 1, FP 1 -> 1/3; class 1: TP 3, FN 1 -> 3/4.
    # Class 2 is predicted but absent from the GT: excluded (not a 0 in the mean). Class 3 only on void.
    # mIoU = (1/3 + 3/4) / 2 = 13/24.
    gt = np.array([[0, 0, 1, 1], [V, V, 1, 1]], np.int32)
    pred = np.array([[0, 2, 1, 1], [3, 3, 1, 0]], np.int32)
    metric = SemanticMIoU(CATS, vc_windows=())
    _update(metric, "v", [gt], [pred])
    assert metric.compute() == {"mIoU": pytest.approx(13 / 24)}
    assert reference_miou([(np.where(gt == V, 255, gt), pred)], 4) == pytest.approx(13 / 24)


def test_video_consistency_hand_computed() -> None:
    # 4 frames of 1 x 2 pixels, n = 2. GT: [0,1] [0,1] [0,2] [0,2]; prediction: [0,1] [1,1] [1,1] [1,2].
    # Starts 0..T-n-1 = 0, 1 (the official loop skips the window starting at 2):
    #   i=0: GT-consistent pixels {0, 1}, prediction-consistent {1} -> 1/2;
    #   i=1: GT-consistent {0}, prediction-consistent {0, 1} -> 1/1.   mVC_2 = (0.5 + 1) / 2 = 0.75.
    gts = [np.array([[0, 1]]), np.array([[0, 1]]), np.array([[0, 2]]), np.array([[0, 2]])]
    preds = [np.array([[0, 1]]), np.array([[1, 1]]), np.array([[1, 1]]), np.array([[1, 2]])]
    metric = SemanticMIoU(CATS, vc_windows=(2,))
    _update(metric, "v", [g.astype(np.int32) for g in gts], [p.astype(np.int32) for p in preds])
    assert metric.compute()["mVC_2"] == pytest.approx(0.75)
    assert reference_vc_windows(gts, preds, 2) == pytest.approx([0.5, 1.0])


def test_vc_nan_windows_are_skipped_and_short_videos_add_nothing() -> None:
    # GT changes at every pixel each frame -> no GT-consistent pixel -> window NaN -> skipped (nanmean)
    gts = [np.full((2, 2), t % 2, np.int32) for t in range(4)]
    metric = SemanticMIoU(CATS, vc_windows=(2, 8))
    _update(metric, "a", gts, gts)
    _update(metric, "b", [np.zeros((2, 2), np.int32)] * 3, [np.zeros((2, 2), np.int32)] * 3)
    out = metric.compute()
    assert out["mVC_2"] == pytest.approx(1.0)  # only video b's windows count (both 1)
    assert math.isnan(out["mVC_8"])  # no video has more than 8 frames


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_reference_on_random_videos(seed: int) -> None:
    rng = np.random.default_rng(seed)
    cats = [Category(i, f"c{i}", False) for i in range(6)]
    metric = SemanticMIoU(cats, vc_windows=(8, 16))
    pairs, vc8, vc16 = [], [], []
    for v in range(3):
        t = int(rng.integers(10, 22))
        base = rng.integers(0, 5, (6, 8))  # blocky labels, class 5 never in the GT
        gts, preds = [], []
        for _ in range(t):
            g = np.kron(base, np.ones((4, 4), np.int64)).astype(np.int32)
            change = rng.random(g.shape) < 0.05
            g[change] = rng.integers(0, 5, int(change.sum()))
            g[rng.random(g.shape) < 0.1] = V
            p = np.where(rng.random(g.shape) < 0.15, rng.integers(0, 6, g.shape), np.where(g == V, 0, g))
            gts.append(g)
            preds.append(p.astype(np.int32))
        _update(metric, f"v{v}", gts, preds)
        pairs += list(zip(gts, preds))
        vc8 += reference_vc_windows(gts, preds, 8)
        vc16 += reference_vc_windows(gts, preds, 16)
    out = metric.compute()
    assert out["mIoU"] == pytest.approx(reference_miou(pairs, 6), abs=1e-9)
    assert out["mVC_8"] == pytest.approx(float(np.nanmean(vc8)), abs=1e-9)
    if vc16:
        assert out["mVC_16"] == pytest.approx(float(np.nanmean(vc16)), abs=1e-9)
    assert 0.0 < out["mIoU"] < 1.0


def test_perfect_prediction_is_one_and_merge() -> None:
    rng = np.random.default_rng(4)
    gts, preds = [], []
    for v in range(2):
        base = np.kron(rng.integers(0, 4, (3, 3)), np.ones((3, 3), np.int64)).astype(np.int32)
        g = [np.roll(base, t // 4, axis=1) for t in range(10)]  # moves every 4 frames
        g[0][0, 0] = V
        gt = make_gt_video(f"v{v}", g, [np.zeros_like(x) for x in g])
        gts.append(gt)
        preds.append(make_prediction(f"v{v}", [np.where(x == V, 0, x) for x in g], None, gt.frames.names))
    out = from_records(make_dataset(gts, CATS, "vspw"), preds)
    assert out == {"mIoU": pytest.approx(1.0), "mVC_8": pytest.approx(1.0), "mVC_16": out["mVC_16"]}
    assert math.isnan(out["mVC_16"])  # 10 frames: no 16-frame window
    single, a, b = SemanticMIoU(CATS), SemanticMIoU(CATS), SemanticMIoU(CATS)
    for gt, pred in zip(gts, preds):
        single.update(pred, gt)
    a.update(preds[0], gts[0])
    b.update(preds[1], gts[1])
    a.merge_state(b)
    merged, one = a.compute(), single.compute()
    assert merged["mIoU"] == pytest.approx(one["mIoU"]) and merged["mVC_8"] == pytest.approx(one["mVC_8"])


def test_errors() -> None:
    gt = np.zeros((2, 2), np.int32)
    with pytest.raises(AnnotationFormatError, match=r"'v'.*'00000'.*prediction.*semantic id 255"):
        _update(SemanticMIoU(CATS), "v", [gt], [np.full((2, 2), V, np.int32)])  # void is not a prediction
    with pytest.raises(AnnotationFormatError, match=r"semantic id 9"):
        _update(SemanticMIoU(CATS), "v", [gt], [np.full((2, 2), 9, np.int32)])
    with pytest.raises(AnnotationFormatError, match="no semantic_maps"):
        from_records(make_dataset([make_gt_video("v", [gt], [gt])], CATS, "vspw"), [])
    with pytest.raises(ValueError, match="at least 2"):
        SemanticMIoU(CATS, vc_windows=(1,))
