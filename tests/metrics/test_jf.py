"""DavisJF vs trackeval's JAndF and vos_benchmark's Evaluator, hand-computed cases, DDP merge, bad input."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from skimage.morphology import disk as skimage_disk
from trackeval.metrics import JAndF
from vos_benchmark.evaluator import Evaluator

from vidseg.data.records import (
    AnnotationFormatError,
    DatasetRecord,
    FrameAnnotation,
    FrameLabels,
    FrameSource,
    TrackInfo,
    TrackPrediction,
    VideoPrediction,
    VideoRecord,
)
from vidseg.metrics._boundary import count_near, disk, label_boundaries
from vidseg.metrics.jf import DavisJF, from_records

KEYS = ["J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]


def enc(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def record_from_label_maps(video_id: str, maps: list[np.ndarray], voids: list | None = None) -> VideoRecord:
    """A DAVIS-like GT video: one label map per frame (decoded lazily through a decoder, as PNGs are)."""
    h, w = maps[0].shape
    anns = []
    for t, lab in enumerate(maps):
        void = None if voids is None else voids[t]

        def decoder(_path, lab=lab, void=void):
            return FrameLabels(masks={int(k): lab == k for k in np.unique(lab) if k}, void=void)

        anns.append(
            FrameAnnotation(
                frame=t,
                label_map=f"{video_id}/{t:05d}.png",
                decoder=decoder,
                track_ids=frozenset(int(k) for k in np.unique(lab) if k),
            )
        )
    ids = sorted({int(k) for lab in maps for k in np.unique(lab) if k})
    return VideoRecord(
        video_id,
        FrameSource("images", names=[f"{t:05d}" for t in range(len(maps))]),
        h,
        w,
        tracks={k: TrackInfo(k) for k in ids},
        annotations=anns,
    )


def prediction(video_id: str, track_masks: dict[int, list], h: int, w: int, scores=None) -> VideoPrediction:
    n = len(next(iter(track_masks.values()))) if track_masks else 0
    tracks = [
        TrackPrediction(k, None, 1.0 if scores is None else scores[k], [None if m is None else enc(m) for m in ms])
        for k, ms in track_masks.items()
    ]
    return VideoPrediction(video_id, h, w, [f"{t:05d}" for t in range(n)], tracks)


def random_video(rng, vid: str, h: int, w: int, n: int, unsupervised: bool = False):
    yy, xx = np.mgrid[:h, :w]
    n_obj = int(rng.integers(1, 5))
    centres = rng.uniform([0.2 * h, 0.2 * w], [0.8 * h, 0.8 * w], size=(n_obj, 2))
    radii = rng.uniform([0.08 * h, 0.08 * w], [0.3 * h, 0.3 * w], size=(n_obj, 2))
    vel = rng.uniform(-0.04, 0.04, size=(n_obj, 2)) * [h, w]
    maps = []
    for t in range(n):
        lab = np.zeros((h, w), np.int32)
        for k in range(n_obj):
            if t > 1 and rng.random() < 0.1:
                continue  # object vanishes in some later frames
            c = centres[k] + vel[k] * t
            lab[((yy - c[0]) / radii[k, 0]) ** 2 + ((xx - c[1]) / radii[k, 1]) ** 2 <= 1] = k + 1
        maps.append(lab)
    for lab in maps[:2]:  # every object visible in the first (reference) and first scored frame
        for k in range(n_obj):
            if not (lab == k + 1).any():
                c = centres[k].astype(int)
                lab[c[0] : c[0] + 3, c[1] : c[1] + 3] = k + 1
    record = record_from_label_maps(vid, maps)
    tracks: dict[int, list] = {}
    n_tracks = n_obj + (int(rng.integers(0, 3)) if unsupervised else 0)
    ids = rng.permutation(n_tracks) + 1 if unsupervised else np.arange(1, n_tracks + 1)
    for k in range(n_tracks):
        dy, dx = rng.integers(-3, 4, size=2)
        masks = []
        for t in range(n):
            if k >= n_obj:  # false proposal
                m = np.zeros((h, w), bool)
                y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
                m[y0 : y0 + 8, x0 : x0 + rng.integers(3, 12)] = True
            else:
                src = k + 1
                if rng.random() < 0.1 and n_obj > 1:  # identity swap in this frame
                    src = int(rng.integers(1, n_obj + 1))
                m = np.roll(np.roll(maps[t] == src, dy, 0), dx, 1)
                if rng.random() < 0.3:
                    m = m & np.roll(m, 2, 0) & np.roll(m, -2, 1)
            masks.append(None if rng.random() < 0.08 else m)
        tracks[int(ids[k])] = masks
    scores = {k: float(rng.random()) for k in tracks}
    return record, prediction(vid, tracks, h, w, scores)


def trackeval_sequence(record: VideoRecord, pred: VideoPrediction, semi: bool, monkeypatch) -> dict:
    """trackeval.metrics.JAndF on the label maps a DAVIS writer would produce. Semi mode pairs object k with
    prediction k (DAVIS), so trackeval's Hungarian step is replaced by the identity there."""
    positions = list(range(record.num_frames))[1:-1] if semi else list(range(record.num_frames))
    first = record.annotations[0].decode().masks
    n_gt = max(first) if first else 0
    pred_maps = [pred.instance_map(t) for t in positions]
    n_tr = max(int(m.max()) for m in pred_maps)
    gt_dets, tr_dets = [], []
    for t, pm in zip(positions, pred_maps):
        masks = record.annotations[t].decode().masks
        gt_dets.append([enc(masks.get(k, np.zeros((record.height, record.width), bool))) for k in range(1, n_gt + 1)])
        tr_dets.append([enc(pm == k) for k in range(1, n_tr + 1)])
    data = {
        "num_timesteps": len(positions),
        "num_tracker_ids": n_tr,
        "num_gt_ids": n_gt,
        "gt_dets": gt_dets,
        "tracker_dets": tr_dets,
        "gt_ids": [np.arange(n_gt)] * len(positions),
        "tracker_ids": [np.arange(n_tr)] * len(positions),
    }
    metric = JAndF()
    if semi:
        import trackeval.metrics.j_and_f as jf_module

        monkeypatch.setattr(
            jf_module, "linear_sum_assignment", lambda c: (np.arange(c.shape[0]), np.arange(c.shape[1]))
        )
    else:
        metric.optim_type = "J&F"
    return metric.eval_sequence(data)


def run_metric(mode: str, videos, **kw) -> tuple[DavisJF, dict]:
    metric = DavisJF(mode=mode, **kw)
    for record, pred in videos:
        metric.update(pred, record)
    return metric, metric.compute()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("mode", ["semi", "unsupervised"])
def test_equals_trackeval(seed, mode, monkeypatch):
    rng = np.random.default_rng(seed)
    videos = [random_video(rng, f"v{i}", 60, 96, int(rng.integers(4, 9)), mode == "unsupervised") for i in range(4)]
    _, ours = run_metric(mode, videos)
    per_seq = {r.video_id: trackeval_sequence(r, p, mode == "semi", monkeypatch) for r, p in videos}
    ref = JAndF().combine_sequences(per_seq)
    for key in KEYS:
        assert ours[key] == pytest.approx(ref[key], abs=1e-12), key
    assert ours["J&F-Mean"] == pytest.approx(ref["J&F"], abs=1e-12)
    assert 0.2 < ours["J&F-Mean"] < 0.95  # noisy, not degenerate


def test_equals_trackeval_at_480p(monkeypatch):
    """Full DAVIS size: tolerance radius ceil(0.008 * diag) = 8 px."""
    rng = np.random.default_rng(7)
    videos = [random_video(rng, "big", 480, 854, 5)]
    metric, ours = run_metric("semi", videos)
    ref = trackeval_sequence(*videos[0], semi=True, monkeypatch=monkeypatch)
    for key in KEYS:
        assert ours[key] == pytest.approx(ref[key], abs=1e-12), key


@pytest.mark.parametrize("seed", [3, 4])
def test_per_object_means_equal_vos_benchmark(seed):
    """vos_benchmark's Evaluator (its own seg2bmap + cv2 dilation) with a 5% tolerance (radius 6 here)."""
    rng = np.random.default_rng(seed)
    record, pred = random_video(rng, "v", 64, 96, 7)
    metric = DavisJF(mode="semi", bound_th=0.05)
    j, f = metric.video_j_and_f(pred, record)
    ev = Evaluator(boundary=0.05)
    for t in range(1, record.num_frames - 1):
        gt_map = np.zeros((64, 96), np.uint8)
        for k, m in record.annotations[t].decode().masks.items():
            gt_map[m] = k
        ev.feed_frame(pred.instance_map(t).astype(np.uint8), gt_map)
    ious, fs = ev.conclude()
    for k in range(1, j.shape[0] + 1):
        assert j[k - 1].mean() * 100 == pytest.approx(ious[k], abs=1e-9)
        assert f[k - 1].mean() * 100 == pytest.approx(fs[k], abs=1e-9)


@pytest.mark.parametrize("radius", [1, 2, 3, 6, 8, 13])
def test_disk_equals_skimage(radius):
    np.testing.assert_array_equal(disk(radius), skimage_disk(radius).astype(np.uint8))


def test_label_boundaries_equal_seg2bmap():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 4, size=(23, 31)).astype(np.int32)
    lab[5:15, 5:20] = 2
    bounds = label_boundaries(lab, np.array([1, 2, 3, 5]))
    for k in (1, 2, 3, 5):
        ref = np.flatnonzero(JAndF._seg2bmap(lab == k))
        np.testing.assert_array_equal(bounds[k], ref)
    assert len(bounds[5]) == 0


@pytest.mark.parametrize("radius", [1, 3, 8])
@pytest.mark.parametrize("spread", [0, 4, 40])
def test_count_near_equals_full_frame_dilation(radius, spread):
    """Row search and its crop-dilation fallback vs cv2.dilate of the whole frame with skimage's disk, on
    curves that are close (row search), far (fallback) or random clouds."""
    rng = np.random.default_rng(radius * 100 + spread)
    h, w = 70, 90
    for _ in range(5):
        ref = np.zeros((h, w), bool)
        query = np.zeros((h, w), bool)
        ys, xs = rng.integers(0, h, 60), rng.integers(0, w, 60)
        ref[ys, xs] = True
        query[
            np.clip(ys + rng.integers(-spread, spread + 1, 60), 0, h - 1),
            np.clip(xs + rng.integers(-spread, spread + 1, 60), 0, w - 1),
        ] = True
        dilated = cv2.dilate(ref.astype(np.uint8), skimage_disk(radius).astype(np.uint8)).astype(bool)
        expected = int((dilated & query).sum())
        got = count_near(np.flatnonzero(query), np.flatnonzero(ref), (h, w), radius)
        assert got == expected


def square_video_semi():
    """10x10 frames, 5 frames (scored: 1, 2, 3). GT: 4x4 square rows 2..5, cols 2..5 in every frame.
    Prediction: frame 1 exact; frame 2 shifted right by 2 px; frame 3 missing; frames 0/4 unscored."""
    gt_sq = np.zeros((10, 10), np.int32)
    gt_sq[2:6, 2:6] = 1
    record = record_from_label_maps("sq", [gt_sq] * 5)
    shifted = np.roll(gt_sq == 1, 2, axis=1)
    pred = prediction("sq", {1: [None, gt_sq == 1, shifted, None, None]}, 10, 10)
    return record, pred


def test_hand_computed_semi():
    """r = ceil(0.008 * sqrt(200)) = 1 (plus-shaped disk). Boundaries are 5x5 outlines (16 px), offset to the
    top-left. Frame 2: J = 8 / 24; 10 of the 16 predicted boundary pixels are within the plus of the GT
    outline (top/bottom rows 4 each, left column 2, right column 0) and symmetrically for recall, so
    P = R = F = 0.625. Frame 3: J = 0, F = 0 (empty prediction).
    Decay with n = 3: indices [0, 1, 1, 2, 2] -> bin 0 = frames (1, 2), bin 3 = frame 3."""
    record, pred = square_video_semi()
    metric = DavisJF(mode="semi")
    j, f = metric.video_j_and_f(pred, record)
    np.testing.assert_allclose(j, [[1.0, 1 / 3, 0.0]])
    np.testing.assert_allclose(f, [[1.0, 0.625, 0.0]])
    metric.update(pred, record)
    res = metric.compute()
    expected = {
        "J-Mean": 4 / 9,
        "J-Recall": 1 / 3,
        "J-Decay": 2 / 3,
        "F-Mean": 1.625 / 3,
        "F-Recall": 2 / 3,
        "F-Decay": 0.8125,
        "J&F-Mean": (4 / 9 + 1.625 / 3) / 2,
    }
    for key, val in expected.items():
        assert res[key] == pytest.approx(val, abs=1e-12), key


def test_hand_computed_unsupervised_void_and_matching():
    """One 10x10 frame; GT square rows 2..5, cols 2..5, void = rows 2..5, cols 6..7. Proposal 3 covers the
    square and the void strip (perfect once void is removed: J = F = 1); proposal 1 is elsewhere. Hungarian
    matching picks proposal 3."""
    gt_sq = np.zeros((10, 10), np.int32)
    gt_sq[2:6, 2:6] = 1
    void = np.zeros((10, 10), bool)
    void[2:6, 6:8] = True
    record = record_from_label_maps("u", [gt_sq], voids=[void])
    good = np.zeros((10, 10), bool)
    good[2:6, 2:8] = True
    other = np.zeros((10, 10), bool)
    other[7:9, 0:3] = True
    pred = prediction("u", {1: [other], 3: [good]}, 10, 10)
    _, res = run_metric("unsupervised", [(record, pred)])
    assert res["J-Mean"] == 1.0 and res["F-Mean"] == 1.0 and res["J&F-Mean"] == 1.0


def test_perfect_prediction_is_one():
    rng = np.random.default_rng(5)
    record, _ = random_video(rng, "p", 48, 64, 6)
    maps = [np.zeros((48, 64), np.int32) for _ in range(6)]
    for t in range(6):
        for k, m in record.annotations[t].decode().masks.items():
            maps[t][m] = k
    ids = sorted(record.tracks)
    pred = prediction("p", {k: [m == k if (m == k).any() else None for m in maps] for k in ids}, 48, 64)
    for mode in ("semi", "unsupervised"):
        _, res = run_metric(mode, [(record, pred)])
        assert res["J&F-Mean"] == 1.0 and res["J-Recall"] == 1.0 and res["F-Decay"] == 0.0


@pytest.mark.filterwarnings("ignore:The ..compute.. method")
def test_missing_prediction_counts_as_empty_and_merge_equals_single():
    rng = np.random.default_rng(11)
    videos = [random_video(rng, f"m{i}", 40, 56, 6) for i in range(4)]
    dataset = DatasetRecord("d", "davis", "val", root=None, categories=[], videos=[v[0] for v in videos])
    full = from_records(dataset, [v[1] for v in videos[:3]])
    empty = prediction("m3", {}, 40, 56)
    empty.frame_names = list(videos[3][0].frames.names)
    _, expected = run_metric("semi", videos[:3] + [(videos[3][0], empty)])
    assert full == pytest.approx(expected, abs=1e-15)
    a, b = DavisJF(), DavisJF()
    for r, p in videos[:2]:
        a.update(p, r)
    for r, p in videos[2:]:
        b.update(p, r)
    a.merge_state(b)
    _, single = run_metric("semi", videos)
    assert a.compute() == pytest.approx(single, abs=1e-15)
    # what DDP sync leaves: 'cat' states concatenated into one tensor
    c = DavisJF()
    c.object_stats = torch.cat([*a.object_stats])
    c.video_keys = torch.cat([*a.video_keys])
    assert c.compute() == pytest.approx(single, abs=1e-15)
    a.update(videos[0][1], videos[0][0])
    with pytest.raises(ValueError, match="more than once"):
        a.compute()


def test_bad_input():
    record, pred = square_video_semi()
    with pytest.raises(AnnotationFormatError, match="higher than the number of GT objects"):
        DavisJF().update(prediction("sq", {2: [None, None, record_mask(record), None, None]}, 10, 10), record)
    short = prediction("sq", {1: [None, None]}, 10, 10)
    with pytest.raises(AnnotationFormatError, match="has 2 mask entries"):
        DavisJF().update(short, record)
    wrong = prediction("sq", {1: [None] * 5}, 10, 10)
    wrong.tracks[0].masks[1] = enc(np.ones((8, 10), bool))
    with pytest.raises(AnnotationFormatError, match="frame 1: RLE size"):
        DavisJF().update(wrong, record)
    dataset = DatasetRecord("d", "davis", "val", root=None, categories=[], videos=[record])
    with pytest.raises(AnnotationFormatError, match="'nope'"):
        from_records(dataset, [prediction("nope", {}, 10, 10)])
    two = record_from_label_maps("s2", [np.zeros((10, 10), np.int32)] * 2)
    with pytest.raises(AnnotationFormatError, match="at least 3 annotated frames"):
        DavisJF().update(prediction("s2", {1: [None, None]}, 10, 10), two)


def record_mask(record: VideoRecord) -> np.ndarray:
    return record.annotations[1].decode().masks[1]
