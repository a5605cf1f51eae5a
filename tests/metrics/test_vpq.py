"""VPQ: a hand-computed video, equality with the straightforward reference on random noisy videos,
perfect predictions, state merging (DDP) and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from _dense_references import (
    make_dataset,
    make_gt_video,
    make_prediction,
    official_vps_frames,
    random_panoptic_video,
    reference_vpq,
)
from vidseg.data.records import IGNORE_LABEL, AnnotationFormatError, Category
from vidseg.metrics.vpq import VPQ, from_records

ROAD, SKY, CAR, PERSON = 0, 1, 2, 3
CATS = [Category(ROAD, "road", False), Category(SKY, "sky", False), Category(CAR, "car", True),
        Category(PERSON, "person", True)]
RANDOM_CATS = [Category(0, "road", False), Category(1, "sky", False), Category(2, "building", False),
               Category(3, "car", True), Category(4, "person", True), Category(5, "bicycle", True)]


def hand_video() -> tuple[list, list, list, list]:
    """2 frames of 4 x 8 pixels. GT (same in both frames):
    row 0: sky (8); row 1: sky cols 0-5 (6), void cols 6-7 (2); row 2: car track 1 cols 0-3 (4),
    person crowd cols 4-5 (2, thing without track), person track 2 cols 6-7 (2); row 3: road (8).
    Prediction frame 0: sky rows 0-1 (16, 2 of them on void), car inst 5 on the car (4), person inst 7 on
    cols 4-7 of row 2 (crowd + person track), road row 3.
    Frame 1: as frame 0 but the car becomes inst 6 (id switch) and cols 6-7 of row 2 become car inst 7
    (class change of instance 7: a new (car, 7) segment); person inst 7 keeps cols 4-5 (the crowd)."""
    g_sem = np.full((4, 8), SKY, np.int32)
    g_sem[1, 6:] = IGNORE_LABEL
    g_sem[2, :4], g_sem[2, 4:] = CAR, PERSON
    g_sem[3] = ROAD
    g_inst = np.zeros((4, 8), np.int32)
    g_inst[2, :4], g_inst[2, 6:] = 1, 2
    p0_sem = np.full((4, 8), SKY, np.int32)
    p0_sem[2, :4], p0_sem[2, 4:] = CAR, PERSON
    p0_sem[3] = ROAD
    p0_inst = np.zeros((4, 8), np.int32)
    p0_inst[2, :4], p0_inst[2, 4:] = 5, 7
    p1_sem, p1_inst = p0_sem.copy(), p0_inst.copy()
    p1_inst[2, :4] = 6
    p1_sem[2, 6:] = CAR
    return [g_sem, g_sem], [g_inst, g_inst], [p0_sem, p1_sem], [p0_inst, p1_inst]


def test_hand_computed_video() -> None:
    # Window n=1 (k=0), frame 0:
    #   sky: I=14, |p|=16, |g|=14, p on void=2 -> IoU 14/(16+14-14-2)=1 -> TP;  road: TP IoU 1;  car: TP IoU 1
    #   person track 2 vs person 7: I=2, union 4+2-2=4 -> IoU 0.5, not > 0.5 -> FN person; person 7 lies
    #   2/4 = 0.5 on the person crowd, not > 0.5 -> FP person.
    # frame 1: sky, road TP IoU 1; car track 1 vs car 6 -> TP IoU 1; person track 2 is covered by (car, 7):
    #   class differs -> FN person; (person, 7) lies 2/2 on the crowd -> ignored; (car, 7): FP car.
    # k=0: sky 2 TP -> PQ 1; road PQ 1; car TP 2, FP 1 -> 2/(2+0.5) = 0.8; person FP 1, FN 2 -> 0.
    #   all = (1+1+0.8+0)/4 = 70;  thing = (0.8+0)/2 = 40;  stuff = 100.
    # Window n=2 (k=5), frames 0-1 stacked:
    #   sky: I=28, |p|=32, void 4 -> IoU 1 TP; road TP; car track 1 (8) vs car 5 (4): I=4, union 8 -> 0.5, no;
    #   vs car 6: same -> FN car, FP car 5, FP car 6; person track 2 (4) vs person 7 (6): I=2, union 8 -> FN
    #   person; person 7 on crowd 4/6 > 0.5 -> ignored; (car, 7) -> FP car.
    #   sky, road PQ 1; car TP 0 -> 0; person 0: all = 50, thing = 0, stuff = 100.
    # VPQ = (70+50)/2 = 60, VPQ_thing = (40+0)/2 = 20, VPQ_stuff = 100.
    gs, gi, ps, pi = hand_video()
    gt = make_gt_video("v", gs, gi)
    metric = VPQ(CATS, windows=(1, 2))
    metric.update(make_prediction("v", ps, pi, gt.frames.names), gt)
    out = metric.compute()
    expected = {"VPQ": 60.0, "VPQ_thing": 20.0, "VPQ_stuff": 100.0, "PQ_k0": 70.0, "PQ_k0_thing": 40.0,
                "PQ_k0_stuff": 100.0, "PQ_k5": 50.0, "PQ_k5_thing": 0.0, "PQ_k5_stuff": 100.0}
    assert out == pytest.approx(expected, abs=1e-9)
    tp, fp, fn = (metric.per_class()[k] for k in ("tp", "fp", "fn"))
    assert tp[0].tolist() == [2, 2, 2, 0] and fp[0].tolist() == [0, 0, 1, 1] and fn[0].tolist() == [0, 0, 0, 2]
    assert tp[1].tolist() == [1, 1, 0, 0] and fp[1].tolist() == [0, 0, 3, 0] and fn[1].tolist() == [0, 0, 1, 1]
    # the straightforward reference agrees on the hand case too
    ref = reference_vpq([official_vps_frames(gs, gi, ps, pi, CATS)], CATS, (1, 2))
    assert out == pytest.approx(ref, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("windows,frames", [((1, 2, 3, 4), 6), ((1, 2, 4, 6, 8), 9)])
def test_equals_reference_on_random_videos(seed: int, windows: tuple[int, ...], frames: int) -> None:
    rng = np.random.default_rng(seed)
    metric = VPQ(RANDOM_CATS, windows=windows)
    official = []
    for v in range(3):
        gs, gi, ps, pi = random_panoptic_video(rng, frames, 24, 32, RANDOM_CATS)
        gt = make_gt_video(f"vid{v}", gs, gi)
        metric.update(make_prediction(f"vid{v}", ps, pi, gt.frames.names), gt)
        official.append(official_vps_frames(gs, gi, ps, pi, RANDOM_CATS))
    ours, ref = metric.compute(), reference_vpq(official, RANDOM_CATS, windows)
    assert set(ours) == set(ref)
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key
    assert 0.0 < ours["VPQ"] < 100.0  # noisy: neither trivial nor perfect


def test_annotated_subset_and_short_videos() -> None:
    """Cityscapes-VPS style: 30 frames, 6 annotated (every 5th); windows run over the annotated frames."""
    rng = np.random.default_rng(7)
    gs, gi, ps, pi = random_panoptic_video(rng, 6, 20, 28, RANDOM_CATS)
    annotated = [0, 5, 10, 15, 20, 25]
    gt = make_gt_video("v", gs, gi, annotated=annotated, num_frames=30)
    # the prediction covers all 30 frames; unannotated frames hold garbage that must not be scored
    full_s = [np.full((20, 28), 1, np.int32) for _ in range(30)]
    full_i = [np.full((20, 28), 3, np.int32) for _ in range(30)]
    for k, f in enumerate(annotated):
        full_s[f], full_i[f] = ps[k], pi[k]
    metric = VPQ(RANDOM_CATS)
    metric.update(make_prediction("v", full_s, full_i, gt.frames.names), gt)
    ref = reference_vpq([official_vps_frames(gs, gi, ps, pi, RANDOM_CATS)], RANDOM_CATS, (1, 2, 3, 4))
    assert metric.compute() == pytest.approx(ref, abs=1e-6)
    # a window longer than the video contributes nothing; no video reaching it -> NaN (official: 0-division)
    short = VPQ(RANDOM_CATS, windows=(1, 8))
    short.update(make_prediction("v", full_s, full_i, gt.frames.names), gt)
    out = short.compute()
    assert math.isnan(out["PQ_k35"]) and math.isnan(out["VPQ"]) and out["PQ_k0"] == pytest.approx(ref["PQ_k0"])


def test_perfect_prediction_is_100() -> None:
    rng = np.random.default_rng(3)
    gts, preds = [], []
    for v in range(2):
        gs, gi, _, _ = random_panoptic_video(rng, 6, 24, 32, RANDOM_CATS)
        gt = make_gt_video(f"v{v}", gs, gi)
        # perfect: GT classes and track ids; void predicted as road (void pixels are never counted)
        ps = [np.where(s == IGNORE_LABEL, 0, s) for s in gs]
        gts.append(gt)
        preds.append(make_prediction(f"v{v}", ps, gi, gt.frames.names))
    out = from_records(make_dataset(gts, RANDOM_CATS, "cityscapes_vps"), preds)
    assert out["VPQ"] == pytest.approx(100.0) and out["VPQ_thing"] == pytest.approx(100.0)
    assert out["VPQ_stuff"] == pytest.approx(100.0)
    assert {"PQ_k0", "PQ_k5", "PQ_k10", "PQ_k15"} <= set(out)


def test_merged_states_equal_single_object() -> None:
    rng = np.random.default_rng(11)
    videos = []
    for v in range(4):
        gs, gi, ps, pi = random_panoptic_video(rng, 6, 20, 24, RANDOM_CATS)
        gt = make_gt_video(f"v{v}", gs, gi)
        videos.append((make_prediction(f"v{v}", ps, pi, gt.frames.names), gt))
    single, part_a, part_b = VPQ(RANDOM_CATS), VPQ(RANDOM_CATS), VPQ(RANDOM_CATS)
    for i, (p, g) in enumerate(videos):
        single.update(p, g)
        (part_a if i % 2 else part_b).update(p, g)
    part_a.merge_state(part_b)
    assert part_a.compute() == pytest.approx(single.compute(), abs=1e-9)


def test_bad_predictions_raise_clear_errors() -> None:
    gs, gi, ps, pi = hand_video()
    gt = make_gt_video("v", gs, gi)
    bad = [ps[0], np.where(ps[1] == SKY, 17, ps[1])]  # 17 is no category
    with pytest.raises(AnnotationFormatError, match=r"'v'.*'00001'.*semantic id 17"):
        VPQ(CATS).update(make_prediction("v", bad, pi, gt.frames.names), gt)
    with pytest.raises(AnnotationFormatError, match=r"lacks frame '00001'"):
        VPQ(CATS).update(make_prediction("v", ps[:1], pi[:1], ["00000"]), gt)
    with pytest.raises(AnnotationFormatError, match="negative"):
        VPQ(CATS).update(make_prediction("v", ps, [pi[0], -pi[1]], gt.frames.names), gt)
    with pytest.raises(AnnotationFormatError, match="no panoptic_maps"):
        from_records(make_dataset([gt], CATS, "cityscapes_vps"), [])
    with pytest.raises(ValueError, match="windows"):
        VPQ(CATS, windows=(0,))
