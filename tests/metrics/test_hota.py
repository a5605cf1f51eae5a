"""BurstHOTA vs the official pipeline (trackeval's BURST dataset class = burstapi's TrackEval copy, run.py's
averaging), vs trackeval's HOTA.eval_sequence for the mask-IoU variant, hand-computed cases, DDP merge."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from trackeval.datasets import BURST
from trackeval.metrics import HOTA

from _metric_references import reference_mask_iou
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
from vidseg.metrics.hota import BURST_COMMON_IDS, BurstHOTA, from_records

COMMON = [4, 13, 34]  # LVIS ids in the 78-id common list
UNCOMMON = [1, 2, 3]
DISTRACTOR = 20
VOCAB = sorted(COMMON + UNCOMMON + [DISTRACTOR])


def enc(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def frame_name(t: int) -> str:
    return f"frame{t:04d}.jpg"


def make_record(
    vid: int, h: int, w: int, n: int, annotated: list[int], gt: dict[int, dict[int, np.ndarray]], cats: dict[int, int]
) -> VideoRecord:
    """gt: track id -> {frame: mask}; annotated: the annotated frames (BURST annotates ~1 fps)."""
    anns = [
        FrameAnnotation(
            frame=t,
            rles={k: enc(m[t]) for k, m in gt.items() if t in m},
            track_ids=frozenset(k for k, m in gt.items() if t in m),
        )
        for t in annotated
    ]
    return VideoRecord(
        str(vid),
        FrameSource("images", names=[frame_name(t)[:-4] for t in range(n)]),
        h,
        w,
        tracks={k: TrackInfo(k, c) for k, c in cats.items()},
        annotations=anns,
    )


def random_video(rng, vid: int, h: int = 40, w: int = 56, n: int = 8):
    yy, xx = np.mgrid[:h, :w]
    annotated = sorted(rng.choice(n, size=int(rng.integers(3, n + 1)), replace=False).tolist())
    n_tracks = int(rng.integers(2, 6))
    cats = {k: int(rng.choice(VOCAB)) for k in range(1, n_tracks + 1)}
    gt: dict[int, dict[int, np.ndarray]] = {}
    for k in cats:
        c = rng.uniform([8, 8], [h - 8, w - 8])
        r = rng.uniform([3, 3], [10, 14])
        v = rng.uniform(-2, 2, size=2)
        shape_is_ring = rng.random() < 0.3
        gt[k] = {}
        for t in range(n):
            if rng.random() < 0.2:
                continue
            cy, cx = c + v * t
            m = ((yy - cy) / r[0]) ** 2 + ((xx - cx) / r[1]) ** 2 <= 1
            if shape_is_ring:
                m &= ((yy - cy) / r[0]) ** 2 + ((xx - cx) / r[1]) ** 2 > 0.3
            gt[k][t] = m
    cats[n_tracks + 1] = int(rng.choice(VOCAB))  # a GT track without any mask
    record = make_record(vid, h, w, n, annotated, gt, cats)
    tracks = []
    for k in list(gt) + [n_tracks + 1]:
        masks = []
        for t in range(n):
            src = k
            if rng.random() < 0.15 and len(gt) > 1:  # identity switch in this frame
                src = int(rng.choice(list(gt)))
            m = gt.get(src, {}).get(t)
            if m is None:
                if rng.random() < 0.3:  # a prediction where the GT has none
                    m = np.zeros((h, w), bool)
                    y0, x0 = rng.integers(0, h - 6), rng.integers(0, w - 6)
                    m[y0 : y0 + 5, x0 : x0 + 5] = True
                    masks.append(enc(m))
                else:
                    masks.append(None)
                continue
            if rng.random() < 0.1:
                masks.append(None)
                continue
            dy, dx = rng.integers(-3, 4, size=2)
            m = np.roll(np.roll(m, dy, 0), dx, 1)
            if rng.random() < 0.3:
                m = m & np.roll(m, 2, 0)
            masks.append(enc(m))
        if rng.random() < 0.1:
            continue  # a GT track without prediction
        tracks.append(TrackPrediction(k, None, float(rng.random()), masks))
    return record, VideoPrediction(str(vid), h, w, [frame_name(t)[:-4] for t in range(n)], tracks)


def official_burst(tmp_path, videos) -> tuple[dict, dict]:
    """Write BURST GT/result JSONs and evaluate them with trackeval's BURST dataset (exemplar-guided) and
    HOTA, combined over sequences per class and averaged as burstapi/eval/run.py does."""
    seqs, pseqs = [], []
    for record, pred in videos:
        ann_paths = [frame_name(a.frame) for a in record.annotations]
        seq = {
            "id": int(record.video_id),
            "width": record.width,
            "height": record.height,
            "seq_name": f"s{record.video_id}",
            "dataset": "LaSOT",
            "fps": 1,
            "all_image_paths": [frame_name(t) for t in range(record.num_frames)],
            "annotated_image_paths": ann_paths,
            "neg_category_ids": [],
            "not_exhaustive_category_ids": [],
            "track_category_ids": {str(k): v.category_id for k, v in record.tracks.items()},
            "segmentations": [
                {str(k): {"rle": r["counts"], "is_gt": True, "score": 1.0} for k, r in a.rles.items()}
                for a in record.annotations
            ],
        }
        seqs.append(seq)
        pseq = dict(seq)
        pseq["annotated_image_paths"] = [frame_name(t) for t in range(record.num_frames)]
        pseq["segmentations"] = [
            {
                str(trk.track_id): {"rle": trk.masks[t]["counts"], "score": trk.score}
                for trk in pred.tracks
                if trk.masks[t] is not None
            }
            for t in range(record.num_frames)
        ]
        pseqs.append(pseq)
    (tmp_path / "gt").mkdir()
    (tmp_path / "tr" / "mine" / "data").mkdir(parents=True)
    (tmp_path / "gt" / "all_classes.json").write_text(json.dumps({"sequences": seqs, "split": "val"}))
    (tmp_path / "tr" / "mine" / "data" / "r.json").write_text(json.dumps({"sequences": pseqs, "split": "val"}))
    cfg = BURST.get_default_dataset_config()
    cfg.update(
        GT_FOLDER=str(tmp_path / "gt"), TRACKERS_FOLDER=str(tmp_path / "tr"), EXEMPLAR_GUIDED=True, PRINT_CONFIG=False
    )
    dataset = BURST(cfg)
    trackers, seq_list, class_list = dataset.get_eval_info()
    metric = HOTA()
    per_seq = {}
    for seq in sorted(seq_list):
        raw = dataset.get_raw_seq_data(trackers[0], seq)
        per_seq[seq] = {c: metric.eval_sequence(dataset.get_preprocessed_seq_data(raw, c)) for c in class_list}
    per_class = {c: metric.combine_sequences({s: r[c] for s, r in per_seq.items()}) for c in class_list}
    name_to_id = {c["name"]: c["id"] for c in dataset.gt_data["categories"]}
    per_class_ids = {name_to_id[c]: v for c, v in per_class.items()}
    out = {}
    for suffix, keep in (
        ("", lambda c: True),
        ("_common", lambda c: c in BURST_COMMON_IDS),
        ("_uncommon", lambda c: c not in BURST_COMMON_IDS),
    ):
        cls = [c for c in per_class_ids if keep(c)]
        for label in ("HOTA", "DetA", "AssA"):
            vals = [per_class_ids[c][label].mean() for c in cls]
            out[label + suffix] = 100 * sum(vals) / len(vals) if vals else float("nan")
    return out, per_class_ids


def run_metric(videos, **kw) -> BurstHOTA:
    metric = BurstHOTA(category_ids=VOCAB, **kw)
    for record, pred in videos:
        metric.update(pred, record)
    return metric


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_equals_official_burst_pipeline(seed, tmp_path, capsys):
    rng = np.random.default_rng(seed)
    videos = [random_video(rng, vid) for vid in range(1, 7)]
    metric = run_metric(videos)
    ours = metric.compute()
    ref, ref_cls = official_burst(tmp_path, videos)
    capsys.readouterr()
    assert set(metric.per_class()) == set(ref_cls)
    for key, val in ref.items():
        if np.isnan(val):
            assert np.isnan(ours[key]), key
        else:
            assert ours[key] == pytest.approx(val, abs=1e-9), key
    for c, vals in metric.per_class().items():
        assert vals["HOTA"] == pytest.approx(100 * ref_cls[c]["HOTA"].mean(), abs=1e-9)
    assert 5 < ours["HOTA"] < 95


@pytest.mark.parametrize("seed", [0, 5])
def test_mask_similarity_equals_trackeval_hota(seed):
    rng = np.random.default_rng(seed)
    videos = [random_video(rng, vid) for vid in range(1, 6)]
    ours = run_metric(videos, similarity="mask")
    ref = reference_mask_iou(videos)
    per_class = ours.per_class()
    assert set(per_class) == set(ref)
    for c, res in ref.items():
        for label in ("HOTA", "DetA", "AssA"):
            assert per_class[c][label] == pytest.approx(100 * res[label].mean(), abs=1e-9)
    all_hota = np.mean([100 * r["HOTA"].mean() for r in ref.values()])
    assert ours.compute()["HOTA"] == pytest.approx(all_hota, abs=1e-9)


def line_video():
    """One GT track (class 4) on a 1-px line, cols 0..7 of row 0, in 2 annotated frames of a 4x10 video.
    Prediction: exact in frame 0; cols 0..4 in frame 1 (IoU 5/8 for masks and for boxes)."""
    gt_line = np.zeros((4, 10), bool)
    gt_line[0, :8] = True
    short = np.zeros((4, 10), bool)
    short[0, :5] = True
    record = make_record(1, 4, 10, 2, [0, 1], {1: {0: gt_line, 1: gt_line}}, {1: 4})
    pred = VideoPrediction("1", 4, 10, ["f0", "f1"], [TrackPrediction(1, None, 1.0, [enc(gt_line), enc(short)])])
    return record, pred


@pytest.mark.parametrize("similarity", ["box", "mask"])
def test_hand_computed(similarity):
    """S = 1 and 0.625. Alignment A = 1.625 / (2 + 2 - 1.625) (only one pair, so it is irrelevant to the
    assignment). alpha <= 0.6 (12 values): TP 2, DetA 1, AssA 2*2/(4-2)/2 = 1, HOTA 1. alpha >= 0.65
    (7 values): TP 1, FN 1, FP 1, DetA 1/3, AssA 1*1/(4-1)/1 = 1/3, HOTA 1/3. Mean: (12 + 7/3) / 19."""
    record, pred = line_video()
    metric = BurstHOTA(category_ids=[4, 5], similarity=similarity)
    metric.update(pred, record)
    res = metric.compute()
    expected = 100 * (12 + 7 / 3) / 19
    assert res["HOTA"] == pytest.approx(expected, abs=1e-9)
    assert res["DetA"] == pytest.approx(expected, abs=1e-9)
    assert res["AssA"] == pytest.approx(expected, abs=1e-9)
    assert res["HOTA_common"] == pytest.approx(expected, abs=1e-9)  # 4 is a common id
    assert np.isnan(res["HOTA_uncommon"])
    assert set(metric.per_class()) == {4}  # class 5 has no GT: not evaluated


def test_box_similarity_is_the_official_quirk():
    """A ring predicted for a filled square has the same box: box IoU 1 (official), mask IoU < 1."""
    sq = np.zeros((20, 20), bool)
    sq[2:12, 2:12] = True
    ring = sq.copy()
    ring[3:11, 3:11] = False
    record = make_record(1, 20, 20, 1, [0], {1: {0: sq}}, {1: 4})
    pred = VideoPrediction("1", 20, 20, ["f0"], [TrackPrediction(1, None, 1.0, [enc(ring)])])
    box = BurstHOTA(category_ids=[4])
    box.update(pred, record)
    mask = BurstHOTA(category_ids=[4], similarity="mask")
    mask.update(pred, record)
    assert box.compute()["HOTA"] == pytest.approx(100.0)
    # mask IoU 36/100: TP for the 7 alphas <= 0.35 only, HOTA = DetA = AssA there = 1
    assert mask.compute()["HOTA"] == pytest.approx(100 * 7 / 19)


def test_perfect_prediction_is_100():
    rng = np.random.default_rng(3)
    record, _ = random_video(rng, 1)
    tracks = []
    for k in record.tracks:
        masks = [None] * record.num_frames
        for a in record.annotations:
            if k in a.rles:
                masks[a.frame] = a.rles[k]
        tracks.append(TrackPrediction(k, None, 1.0, masks))
    pred = VideoPrediction("1", record.height, record.width, list(record.frames.names), tracks)
    res = run_metric([(record, pred)], similarity="mask").compute()
    assert res["HOTA"] == pytest.approx(100.0) and res["AssA"] == pytest.approx(100.0)


def test_merge_and_missing_prediction():
    rng = np.random.default_rng(9)
    videos = [random_video(rng, vid) for vid in range(1, 6)]
    single = run_metric(videos).compute()
    a, b = run_metric(videos[:2]), run_metric(videos[2:])
    a.merge_state(b)
    assert a.compute() == pytest.approx(single, abs=1e-12, nan_ok=True)
    c = BurstHOTA(category_ids=VOCAB)  # what a DDP sum/cat reduction leaves
    c.stats = run_metric(videos[:2]).stats + run_metric(videos[2:]).stats
    c.present = run_metric(videos[:2]).present + run_metric(videos[2:]).present
    c.video_keys = torch.arange(5)
    c._update_count = 1
    assert c.compute() == pytest.approx(single, abs=1e-12, nan_ok=True)
    dataset = DatasetRecord(
        "burst",
        "burst",
        "val",
        root=None,
        categories=[Category(i, str(i)) for i in VOCAB],
        videos=[v[0] for v in videos],
    )
    empty = VideoPrediction("5", videos[4][0].height, videos[4][0].width, list(videos[4][0].frames.names))
    expected = run_metric(videos[:4] + [(videos[4][0], empty)]).compute()
    assert from_records(dataset, [v[1] for v in videos[:4]]) == pytest.approx(expected, nan_ok=True)


def test_bad_input():
    record, pred = line_video()
    metric = BurstHOTA(category_ids=[4])
    pred.tracks[0].track_id = 9
    with pytest.raises(AnnotationFormatError, match="track 9 is not a GT track id"):
        metric.update(pred, record)
    record, pred = line_video()
    pred.tracks[0].masks = pred.tracks[0].masks[:1]
    with pytest.raises(AnnotationFormatError, match="has 1 mask entries, the video has 2 frames"):
        metric.update(pred, record)
    record, pred = line_video()
    pred.tracks[0].masks[1] = enc(np.zeros((5, 10), bool))
    with pytest.raises(AnnotationFormatError, match="frame 1: RLE size"):
        metric.update(pred, record)
    record, pred = line_video()
    with pytest.raises(AnnotationFormatError, match="category 4 is not in the vocabulary"):
        BurstHOTA(category_ids=[5]).update(pred, record)
    dataset = DatasetRecord("burst", "burst", "val", root=None, categories=[Category(4, "a")], videos=[record])
    with pytest.raises(AnnotationFormatError, match="'77'"):
        from_records(dataset, [VideoPrediction("77", 4, 10, ["f0", "f1"])])
