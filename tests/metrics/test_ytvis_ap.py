"""YTVISMeanAP vs a reference built on pycocotools' own COCOeval (video-level IoU through computeIoU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from _metric_references import STAT_KEYS, reference_stats
from vidseg.data.records import (
    AnnotationFormatError,
    Category,
    DatasetRecord,
    FrameAnnotation,
    FrameSource,
    TrackInfo,
    TrackPrediction,
    VideoPrediction,
    VideoRecord,
)
from vidseg.metrics.ytvis_ap import YTVISMeanAP, from_records

SMALL_AREAS = [(0.0, 1e10), (0.0, 16.0**2), (16.0**2, 32.0**2), (32.0**2, 1e10)]  # scaled to 48x64 frames


def enc(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def make_record(
    video_id: str,
    gt_masks: dict[int, list],
    cats: dict[int, int],
    h: int,
    w: int,
    crowd: frozenset[int] = frozenset(),
) -> VideoRecord:
    """gt_masks: track id -> per-frame bool mask or None."""
    n = len(next(iter(gt_masks.values())))
    anns = []
    for t in range(n):
        rles = {tid: (enc(ms[t]) if ms[t] is not None else None) for tid, ms in gt_masks.items()}
        anns.append(FrameAnnotation(frame=t, rles=rles, track_ids=frozenset(k for k, v in rles.items() if v)))
    return VideoRecord(
        video_id=video_id,
        frames=FrameSource(kind="images", names=[f"{t:05d}" for t in range(n)]),
        height=h,
        width=w,
        tracks={tid: TrackInfo(tid, cats[tid], tid in crowd) for tid in gt_masks},
        annotations=anns,
    )


def random_video(rng: np.random.Generator, vid: int, h: int = 48, w: int = 64, n: int = 5):
    """GT tubes (moving rectangles/ellipses, sometimes absent) and noisy predictions: shifted, eroded, dropped
    frames, wrong classes, extra class hypotheses, false tracks, occasional crowd GT."""
    yy, xx = np.mgrid[:h, :w]
    gt_masks, cats, crowd = {}, {}, set()
    for tid in range(1, rng.integers(1, 5) + 1):
        cy, cx = rng.integers(8, h - 8), rng.integers(8, w - 8)
        ry, rx = rng.integers(3, 16), rng.integers(3, 22)
        vy, vx = rng.integers(-2, 3, size=2)
        ell = rng.random() < 0.5
        frames = []
        for t in range(n):
            if rng.random() < 0.15:
                frames.append(None)
                continue
            y0, x0 = cy + vy * t, cx + vx * t
            if ell:
                m = ((yy - y0) / ry) ** 2 + ((xx - x0) / rx) ** 2 <= 1
            else:
                m = (abs(yy - y0) <= ry) & (abs(xx - x0) <= rx)
            frames.append(m)
        gt_masks[tid] = frames
        cats[tid] = int(rng.integers(1, 4))
        if rng.random() < 0.1:
            crowd.add(tid)
    record = make_record(str(vid), gt_masks, cats, h, w, frozenset(crowd))
    tracks = []
    next_id = 1
    for tid, frames in gt_masks.items():
        for _hyp in range(rng.integers(1, 3)):
            dy, dx = rng.integers(-3, 4, size=2)
            erode = rng.random() < 0.3
            masks = []
            for m in frames:
                if m is None or rng.random() < 0.1:
                    masks.append(None)
                    continue
                p = np.roll(np.roll(m, dy, 0), dx, 1)
                if erode:
                    p = p & np.roll(p, 1, 0) & np.roll(p, -1, 1)
                masks.append(enc(p))
            cat = cats[tid] if rng.random() < 0.8 else int(rng.integers(1, 4))
            tracks.append(TrackPrediction(next_id, cat, float(rng.random()), masks))
            next_id += 1
    for _ in range(rng.integers(0, 3)):  # false tracks
        y0, x0 = rng.integers(0, h - 10), rng.integers(0, w - 10)
        m = np.zeros((h, w), bool)
        m[y0 : y0 + rng.integers(3, 10), x0 : x0 + rng.integers(3, 10)] = True
        tracks.append(
            TrackPrediction(
                next_id,
                int(rng.integers(1, 4)),
                float(rng.random()),
                [enc(m) if rng.random() < 0.8 else None for _ in range(n)],
            )
        )
        next_id += 1
    pred = VideoPrediction(str(vid), h, w, record.frames.names, tracks)
    return record, pred


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_equals_cocoeval_reference(seed, capsys):
    rng = np.random.default_rng(seed)
    data = [random_video(rng, vid) for vid in range(1, 9)]
    records, preds = [d[0] for d in data], [d[1] for d in data]
    metric = YTVISMeanAP(category_ids=[1, 2, 3], area_ranges=SMALL_AREAS)
    for r, p in zip(records, preds):
        metric.update(p, r)
    ours = metric.compute()
    ref, ref_cat = reference_stats(records, preds, [1, 2, 3], SMALL_AREAS)
    capsys.readouterr()
    for key in STAT_KEYS:
        assert ours[key] == pytest.approx(ref[key], abs=1e-9), key
    for c, v in metric.per_category_ap().items():
        assert v == pytest.approx(ref_cat[c], abs=1e-9)
    assert 0 < ours["AP"] < 1  # the data exercises real matching, not a degenerate case


def square_case(side: int) -> tuple[VideoRecord, VideoPrediction]:
    h = w = 32
    sq = np.zeros((h, w), bool)
    sq[4 : 4 + side, 4 : 4 + side] = True
    record = make_record("1", {1: [sq, sq, sq]}, {1: 1}, h, w)
    shifted = enc(np.roll(sq, 1, axis=1))
    pred = VideoPrediction("1", h, w, record.frames.names, [TrackPrediction(1, 1, 0.9, [shifted, shifted, None])])
    return record, pred


@pytest.mark.parametrize("side", [9, 10, 15])
def test_hand_computed_square(side):
    """GT: an s x s square in 3 frames; prediction: shifted by 1 px in frames 0-1, missing in frame 2.
    Shifted frames: intersection s(s-1), union s(s+1); frame 2 adds s^2 to the union only, so
    IoU = 2s(s-1) / (2s(s+1) + s^2) = 2(s-1) / (3s+2). AP = 0.2 needs IoU in [0.55, 0.60) (only the
    thresholds 0.50 and 0.55 match, each with precision 1 at every recall point):
    2(s-1)/(3s+2) >= 0.55 <=> s >= 9, < 0.60 <=> s < 16; s = 8 gives 0.538 (AP 0.1) and s = 16 gives
    0.600 (AP 0.3). s = 10: IoU = 18/32."""
    record, pred = square_case(side)
    metric = YTVISMeanAP(category_ids=[1, 2])
    metric.update(pred, record)
    res = metric.compute()
    # precision is tp / (tp + fp + eps) officially, so "1" is 1 - 2e-16
    assert res["AP"] == pytest.approx(0.2) and res["AP50"] == pytest.approx(1.0) and res["AP75"] == 0.0
    assert res["AP_s"] == pytest.approx(0.2) and res["AP_m"] == -1.0 and res["AP_l"] == -1.0
    assert res["AR1"] == pytest.approx(0.2) and res["AR100"] == pytest.approx(0.2)
    assert metric.per_category_ap() == {1: pytest.approx(0.2), 2: -1.0}


@pytest.mark.parametrize(("side", "ap"), [(8, 0.1), (16, 0.3)])
def test_hand_computed_square_bounds(side, ap):
    record, pred = square_case(side)
    metric = YTVISMeanAP(category_ids=[1])
    metric.update(pred, record)
    assert metric.compute()["AP"] == pytest.approx(ap)


def test_max_dets_count_per_video_and_category():
    """Two GT objects of one class in one video, both predicted perfectly: AR1 = 0.5 (one detection per video
    and category), AR10 = 1; AP = 1."""
    a = np.zeros((16, 16), bool)
    a[1:5, 1:5] = True
    b = np.zeros((16, 16), bool)
    b[8:14, 8:14] = True
    record = make_record("3", {1: [a, a], 2: [b, b]}, {1: 1, 2: 1}, 16, 16)
    pred = VideoPrediction(
        "3",
        16,
        16,
        record.frames.names,
        [TrackPrediction(1, 1, 0.9, [enc(a)] * 2), TrackPrediction(2, 1, 0.8, [enc(b)] * 2)],
    )
    metric = YTVISMeanAP(category_ids=[1])
    metric.update(pred, record)
    res = metric.compute()
    assert res["AR1"] == 0.5 and res["AR10"] == 1.0 and res["AP"] == pytest.approx(1.0, abs=1e-12)


def test_perfect_predictions_give_one():
    rng = np.random.default_rng(4)
    metric = YTVISMeanAP(category_ids=[1, 2, 3], area_ranges=SMALL_AREAS)
    for vid in range(1, 5):
        record, _ = random_video(rng, vid)
        tracks = [
            TrackPrediction(k, info.category_id, 1.0, [a.rles[k] for a in record.annotations])
            for k, info in record.tracks.items()
        ]
        metric.update(VideoPrediction(str(vid), 48, 64, record.frames.names, tracks), record)
    res = metric.compute()
    for key in STAT_KEYS:
        if key != "AR1":
            assert res[key] == -1.0 or res[key] == pytest.approx(1.0, abs=1e-12), key
    assert res["AP"] == pytest.approx(1.0, abs=1e-12) and res["AR100"] == 1.0


def test_merge_equals_single_and_missing_prediction():
    rng = np.random.default_rng(12)
    data = [random_video(rng, vid) for vid in range(1, 7)]
    single = YTVISMeanAP(category_ids=[1, 2, 3])
    for r, p in data:
        single.update(p, r)
    expected = single.compute()
    a, b = YTVISMeanAP(category_ids=[1, 2, 3]), YTVISMeanAP(category_ids=[1, 2, 3])
    for r, p in data[:3]:
        a.update(p, r)
    for r, p in data[3:]:
        b.update(p, r)
    a.merge_state(b)
    assert a.compute() == pytest.approx(expected, abs=1e-12)
    # after a DDP sync the 'cat' states are single tensors and 'sum' states are summed
    c = YTVISMeanAP(category_ids=[1, 2, 3])
    for name in ("det_meta", "det_score", "det_flags", "video_keys"):
        setattr(c, name, torch.cat(getattr(a, name)))
    c.gt_count = a.gt_count.clone()
    c._update_count = 1
    assert c.compute() == pytest.approx(expected, abs=1e-12)
    a.update(data[0][1], data[0][0])
    with pytest.raises(ValueError, match="more than once"):
        a.compute()
    dataset = DatasetRecord(
        "y",
        "ytvis",
        "valid",
        root=None,
        categories=[Category(i, str(i)) for i in (1, 2, 3)],
        videos=[d[0] for d in data],
    )
    last = data[-1][0]
    empty = VideoPrediction(last.video_id, last.height, last.width, last.frames.names)
    ref = YTVISMeanAP(category_ids=[1, 2, 3])
    for r, p in data[:-1] + [(last, empty)]:
        ref.update(p, r)
    assert from_records(dataset, [d[1] for d in data[:-1]]) == pytest.approx(ref.compute(), abs=1e-12)


def test_bad_input():
    record, pred = square_case(10)
    dataset = DatasetRecord("y", "ytvis", "valid", root=None, categories=[Category(1, "a")], videos=[record])
    with pytest.raises(AnnotationFormatError, match="'42'"):
        from_records(dataset, [VideoPrediction("42", 32, 32, record.frames.names)])
    pred.tracks[0].masks = pred.tracks[0].masks[:2]
    with pytest.raises(AnnotationFormatError, match="has 2 mask entries, the video has 3 frames"):
        YTVISMeanAP(category_ids=[1]).update(pred, record)
    record, pred = square_case(10)
    pred.tracks[0].masks[2] = enc(np.zeros((31, 32), bool))
    with pytest.raises(AnnotationFormatError, match="frame 2: RLE size"):
        YTVISMeanAP(category_ids=[1]).update(pred, record)
    record, pred = square_case(10)
    pred.tracks[0].category_id = 7
    with pytest.raises(AnnotationFormatError, match="category 7 is not in the vocabulary"):
        YTVISMeanAP(category_ids=[1]).update(pred, record)
