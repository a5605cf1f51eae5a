"""STQ: hand-computed cases, the void-column quirk, VIPSeg's first-segment crowd quirk, equality with the
dictionary-based reference on random noisy videos (both variants), perfect predictions, merging, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_vpq import CATS, RANDOM_CATS, hand_video

from _dense_references import (
    ReferenceSTQ,
    kitti_labels,
    make_dataset,
    make_gt_video,
    make_prediction,
    random_panoptic_video,
    vipseg_label_maps,
    vipseg_segments,
)
from vidseg.data.records import IGNORE_LABEL, AnnotationFormatError
from vidseg.metrics.stq import STQ, from_records

ROAD, CAR = 0, 2


def test_hand_computed_video() -> None:
    # The VPQ hand video (2 frames). Tracking term over GT thing pixels outside the crowd and predicted thing
    # pixels outside the crowd:
    #   |car track 1| = 8, |person track 2| = 4; |car 5| = 4, |car 6| = 4, |person 7| = 2 (frame 0, outside
    #   the crowd), |car 7| = 2.  TPA: (1, car 5) 4, (1, car 6) 4, (2, person 7) 2, (2, car 7) 2.
    #   AQ(1) = 1/8 (4 * 4/8 + 4 * 4/8) = 0.5;  AQ(2) = 1/4 (2 * 2/4 + 2 * 2/4) = 0.5;  AQ = 1/2 = 0.5.
    # Segmentation term (void GT row dropped: the 4 sky pixels on void are no FP):
    #   road 16/16 = 1, sky 28/28 = 1, car TP 8, FP 2 (person track predicted car in frame 1) -> 0.8,
    #   person TP 6 (crowd 4 + track 2), FN 2 -> 0.75;  SQ_IoU = (1 + 1 + 0.8 + 0.75)/4 = 0.8875.
    # STQ = sqrt(0.5 * 0.8875).
    gs, gi, ps, pi = hand_video()
    gt = make_gt_video("v", gs, gi)
    metric = STQ(CATS, variant="kitti")
    metric.update(make_prediction("v", ps, pi, gt.frames.names), gt)
    out = metric.compute()
    expected = {"STQ": math.sqrt(0.5 * 0.8875), "AQ": 0.5, "SQ_IoU": 0.8875}
    assert {k: out[k] for k in expected} == pytest.approx(expected, abs=1e-12)
    assert out["STQ/v"] == pytest.approx(expected["STQ"]) and out["AQ/v"] == pytest.approx(0.5)
    assert out["SQ_IoU/v"] == pytest.approx(0.8875)


def test_void_prediction_adds_zero_iou_class() -> None:
    # GT: 4 road pixels; prediction: 3 road, 1 void. Road IoU 3/4; the void column has union 1 and IoU 0,
    # so SQ_IoU = (0.75 + 0)/2 = 0.375 (deeplab2 keeps the void column). No thing -> AQ = 0 -> STQ = 0.
    gt = make_gt_video("v", [np.full((2, 2), ROAD, np.int32)], [np.zeros((2, 2), np.int32)])
    pred_sem = np.array([[ROAD, ROAD], [ROAD, IGNORE_LABEL]], np.int32)
    metric = STQ(CATS)
    metric.update(make_prediction("v", [pred_sem], [np.zeros((2, 2), np.int32)], gt.frames.names), gt)
    out = metric.compute()
    assert out["SQ_IoU"] == pytest.approx(0.375) and out["AQ"] == 0.0 and out["STQ"] == 0.0


def _cars_only_video() -> tuple[list, list, list, list]:
    """2 frames of 2 x 4: row 0 car track 1, row 1 car track 2 (no stuff anywhere). Prediction: row 0 is car
    inst 1 in frame 0 and car inst 3 in frame 1 (id switch); row 1 car inst 2 in both frames."""
    sem = np.full((2, 4), CAR, np.int32)
    inst = np.array([[1] * 4, [2] * 4], np.int32)
    p0 = np.array([[1] * 4, [2] * 4], np.int32)
    p1 = np.array([[3] * 4, [2] * 4], np.int32)
    return [sem, sem], [inst, inst], [sem, sem], [p0, p1]


def test_vipseg_first_segment_crowd_quirk() -> None:
    # KITTI rules: AQ(1) = 1/8 (4 * 4/8 + 4 * 4/8) = 0.5, AQ(2) = 1/8 * 8 * 8/8 = 1 -> AQ 0.75; car IoU 1.
    # VIPSeg: the first listed segment of frame 0 (no stuff -> car track 1, the lowest raw value) gets
    # instance 0 = crowd: track 1 and the predictions on it leave AQ -> AQ = AQ(2) = 1, STQ = 1.
    gs, gi, ps, pi = _cars_only_video()
    gt = make_gt_video("v", gs, gi)
    pred = make_prediction("v", ps, pi, gt.frames.names)
    kitti, vipseg = STQ(CATS, variant="kitti"), STQ(CATS, variant="vipseg")
    kitti.update(pred, gt)
    vipseg.update(pred, gt)
    assert kitti.compute()["AQ"] == pytest.approx(0.75) and kitti.compute()["STQ"] == pytest.approx(0.75**0.5)
    assert vipseg.compute()["AQ"] == pytest.approx(1.0) and vipseg.compute()["STQ"] == pytest.approx(1.0)
    # with one stuff pixel in frame 0, a stuff segment is listed first and the quirk does nothing
    gs2 = [gs[0].copy(), gs[1]]
    gi2 = [gi[0].copy(), gi[1]]
    gs2[0][0, 0], gi2[0][0, 0] = ROAD, 0
    gt2 = make_gt_video("v", gs2, gi2)
    a, b = STQ(CATS, variant="kitti"), STQ(CATS, variant="vipseg")
    a.update(make_prediction("v", ps, pi, gt2.frames.names), gt2)
    b.update(make_prediction("v", ps, pi, gt2.frames.names), gt2)
    assert a.compute()["AQ"] == pytest.approx(b.compute()["AQ"]) and a.compute()["AQ"] < 0.8


def _reference_run(variant: str, seed: int, quirk_video: bool) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    metric = STQ(RANDOM_CATS, variant=variant)
    things = [c.id for c in RANDOM_CATS if c.isthing]
    isthing = {c.id: c.isthing for c in RANDOM_CATS}
    ref = ReferenceSTQ(len(RANDOM_CATS), things)
    for v in range(3):
        gs, gi, ps, pi = random_panoptic_video(rng, 5, 24, 32, RANDOM_CATS, crowd=variant == "kitti")
        if quirk_video and v == 1:  # no stuff in the first frame: a thing segment is listed first
            gs[0] = np.where(np.isin(gs[0], things), gs[0], IGNORE_LABEL)
            gi[0] = np.where(gs[0] == IGNORE_LABEL, 0, gi[0])
        gt = make_gt_video(f"v{v}", gs, gi)
        metric.update(make_prediction(f"v{v}", ps, pi, gt.frames.names), gt)
        if variant == "kitti":
            pairs = [(kitti_labels(g, i), kitti_labels(s, q)) for g, i, s, q in zip(gs, gi, ps, pi)]
        else:  # labels rebuilt from segments_info as eval_stq_vspw.py does
            gl = vipseg_label_maps([vipseg_segments(g, i, isthing) for g, i in zip(gs, gi)])
            pl = vipseg_label_maps([vipseg_segments(s, q, None) for s, q in zip(ps, pi)])
            pairs = list(zip(gl, pl))
        for a, b in pairs:
            ref.update(a, b, f"v{v}")
    return metric.compute(), ref.result()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("variant", ["kitti", "vipseg"])
def test_equals_reference_on_random_videos(variant: str, seed: int) -> None:
    ours, ref = _reference_run(variant, seed, quirk_video=True)
    for key in ("STQ", "AQ", "SQ_IoU"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-6), key
    for i, vid in enumerate(ref["ids"]):
        assert ours[f"AQ/{vid}"] == pytest.approx(ref["AQ_per_seq"][i], abs=1e-6)
        assert ours[f"SQ_IoU/{vid}"] == pytest.approx(ref["SQ_IoU_per_seq"][i], abs=1e-6)
        assert ours[f"STQ/{vid}"] == pytest.approx(ref["STQ_per_seq"][i], abs=1e-6)
    assert 0.0 < ours["STQ"] < 1.0


def test_quirk_changes_the_random_result() -> None:
    """The VIPSeg quirk video really differs between the variants (so the equality above tests it)."""
    vip, _ = _reference_run("vipseg", 0, quirk_video=True)
    rng = np.random.default_rng(0)
    kitti = STQ(RANDOM_CATS, variant="kitti")
    things = [c.id for c in RANDOM_CATS if c.isthing]
    for v in range(3):
        gs, gi, ps, pi = random_panoptic_video(rng, 5, 24, 32, RANDOM_CATS, crowd=False)
        if v == 1:
            gs[0] = np.where(np.isin(gs[0], things), gs[0], IGNORE_LABEL)
            gi[0] = np.where(gs[0] == IGNORE_LABEL, 0, gi[0])
        gt = make_gt_video(f"v{v}", gs, gi)
        kitti.update(make_prediction(f"v{v}", ps, pi, gt.frames.names), gt)
    k = kitti.compute()
    assert k["AQ/v0"] == pytest.approx(vip["AQ/v0"]) and k["AQ/v1"] != pytest.approx(vip["AQ/v1"])


def test_perfect_prediction_is_one() -> None:
    rng = np.random.default_rng(5)
    gts, preds = [], []
    for v in range(2):
        gs, gi, _, _ = random_panoptic_video(rng, 5, 24, 32, RANDOM_CATS)
        gt = make_gt_video(f"s{v}", gs, gi)
        gts.append(gt)
        preds.append(make_prediction(f"s{v}", [np.where(s == IGNORE_LABEL, 0, s) for s in gs], gi,
                                     gt.frames.names))
    for fmt in ("kitti_step", "vipseg"):
        out = from_records(make_dataset(gts, RANDOM_CATS, fmt), preds)
        assert out["STQ"] == pytest.approx(1.0) and out["AQ"] == pytest.approx(1.0)
        assert out["SQ_IoU"] == pytest.approx(1.0)


def test_merged_states_equal_single_object() -> None:
    rng = np.random.default_rng(2)
    videos = []
    for v in range(4):
        gs, gi, ps, pi = random_panoptic_video(rng, 4, 20, 24, RANDOM_CATS)
        gt = make_gt_video(f"v{v}", gs, gi)
        videos.append((make_prediction(f"v{v}", ps, pi, gt.frames.names), gt))
    single, part_a, part_b = STQ(RANDOM_CATS), STQ(RANDOM_CATS), STQ(RANDOM_CATS)
    for i, (p, g) in enumerate(videos):
        single.update(p, g)
        (part_a if i % 2 else part_b).update(p, g)
    part_a.merge_state(part_b)
    assert part_a.compute() == pytest.approx(single.compute(), abs=1e-12)


def test_errors() -> None:
    gs, gi, ps, pi = hand_video()
    gt = make_gt_video("v", gs, gi)
    with pytest.raises(AnnotationFormatError, match=r"'v'.*'00000'.*semantic id 4[0-3] is not a category"):
        STQ(CATS).update(make_prediction("v", [ps[0] + 40, ps[1]], pi, gt.frames.names), gt)
    metric = STQ(CATS)
    metric.update(make_prediction("v", ps, pi, gt.frames.names), gt)
    metric.update(make_prediction("v", ps, pi, gt.frames.names), gt)
    with pytest.raises(ValueError, match="more than once"):
        metric.compute()
    with pytest.raises(ValueError, match="variant"):
        STQ(CATS, variant="cityscapes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="thing ids"):
        STQ(CATS, things=(42,))
