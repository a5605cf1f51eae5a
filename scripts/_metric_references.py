"""Independent references for the instance metrics (YouTube-VIS AP, BURST HOTA, DAVIS J&F) and the bench
workloads (30 videos x 30 frames x 5 objects at 480p). Used by scripts/bench_metrics.py and tests/metrics.

- YouTube-VIS: pycocotools' own COCOeval, with videos as images and computeIoU overridden by the video IoU
  computed pair by pair and frame by frame with maskUtils.merge/area, as youtubevos' ytvoseval does;
- BURST (mask-IoU variant): trackeval's HOTA.eval_sequence on per (video, class) data built from the records;
- DAVIS: vos-benchmark's Evaluator fed the label maps a DAVIS PNG writer produces.
"""

from __future__ import annotations

import copy

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from trackeval.metrics import HOTA

from vidseg.data.records import (
    FrameAnnotation,
    FrameLabels,
    FrameSource,
    TrackInfo,
    TrackPrediction,
    VideoPrediction,
    VideoRecord,
)

STAT_KEYS = ["AP", "AP50", "AP75", "AP_s", "AP_m", "AP_l", "AR1", "AR10", "AR100", "AR_s", "AR_m", "AR_l"]
BURST_DISTRACTOR = 20


def enc(mask: np.ndarray) -> dict:
    """Compressed COCO RLE with ascii counts (as the JSON readers give it)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


# ---------------------------------------------------------------------------------------------------------
# Reference: pycocotools COCOeval with videos as images, computeIoU overridden by the video IoU
# (sum of per-frame intersections / sum of unions, via maskUtils.merge/area as youtubevos' ytvoseval does),
# 'area' = mean of the non-zero per-frame areas.
# ---------------------------------------------------------------------------------------------------------


def _avg_area(segs: list) -> float:
    areas = [float(mask_utils.area(s)) for s in segs if s is not None]
    areas = [a for a in areas if a]
    return float(np.mean(areas)) if areas else 0.0


class VideoCOCOeval(COCOeval):
    def __init__(self, gt_coco, dt_coco, segs):
        super().__init__(gt_coco, dt_coco, iouType="bbox")
        self.segs = segs  # (kind, ann id) -> per-frame RLE list

    def computeIoU(self, imgId, catId):  # noqa: N802 (COCOeval's name)
        gt = self._gts[imgId, catId]
        dt = self._dts[imgId, catId]
        if len(gt) == 0 and len(dt) == 0:
            return []
        inds = np.argsort([-d["score"] for d in dt], kind="mergesort")
        dt = [dt[i] for i in inds][: self.params.maxDets[-1]]
        ious = np.zeros((len(dt), len(gt)))
        for i, d in enumerate(dt):
            for j, g in enumerate(gt):
                inter = union = 0.0
                for ds, gs in zip(self.segs["dt", d["id"]], self.segs["gt", g["id"]]):
                    if ds is not None and gs is not None:
                        inter += mask_utils.area(mask_utils.merge([ds, gs], True))
                        union += mask_utils.area(mask_utils.merge([ds, gs], False))
                    elif gs is not None:
                        union += mask_utils.area(gs)
                    elif ds is not None:
                        union += mask_utils.area(ds)
                ious[i, j] = inter / union if union > 0 else 0.0
        return ious


def reference_stats(records, preds, cat_ids, area_ranges):
    images = [{"id": int(r.video_id)} for r in records]
    cats = [{"id": c} for c in cat_ids]
    gt_anns, dt_anns, segs = [], [], {}
    for r in records:
        for tid, info in r.tracks.items():
            seq = [a.rles.get(tid) for a in r.annotations]
            gid = len(gt_anns) + 1
            segs["gt", gid] = seq
            gt_anns.append(
                {
                    "id": gid,
                    "image_id": int(r.video_id),
                    "category_id": info.category_id,
                    "iscrowd": int(info.iscrowd),
                    "area": _avg_area(seq),
                    "bbox": [0, 0, 1, 1],
                }
            )
    for p in preds:
        for trk in p.tracks:
            did = len(dt_anns) + 1
            segs["dt", did] = list(trk.masks)
            dt_anns.append(
                {
                    "id": did,
                    "image_id": int(p.video_id),
                    "category_id": trk.category_id,
                    "score": trk.score,
                    "iscrowd": 0,
                    "area": _avg_area(trk.masks),
                    "bbox": [0, 0, 1, 1],
                }
            )
    gt_coco, dt_coco = COCO(), COCO()
    gt_coco.dataset = {"images": images, "categories": cats, "annotations": gt_anns}
    dt_coco.dataset = {"images": copy.deepcopy(images), "categories": cats, "annotations": dt_anns}
    gt_coco.createIndex()
    dt_coco.createIndex()
    ev = VideoCOCOeval(gt_coco, dt_coco, segs)
    ev.params.areaRng = [list(a) for a in area_ranges]
    ev.params.maxDets = [1, 10, 100]
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    per_cat = {}
    for k, c in enumerate(ev.params.catIds):
        s = ev.eval["precision"][:, :, k, 0, -1]
        per_cat[c] = float(np.mean(s[s > -1])) if (s > -1).any() else -1.0
    return dict(zip(STAT_KEYS, ev.stats.tolist())), per_cat


def reference_mask_iou(videos, distractors=frozenset({BURST_DISTRACTOR})) -> dict:
    """Mask-IoU variant: per (video, class) data for trackeval's HOTA.eval_sequence built here from the
    records (timesteps = annotated frames with a non-distractor GT mask; ids relabelled contiguously)."""
    metric = HOTA()
    per_class_seq: dict[int, dict] = {}
    for record, pred in videos:
        cats = {k: v.category_id for k, v in record.tracks.items()}
        steps = [a for a in record.annotations if any(cats[k] not in distractors for k in a.rles)]
        for c in {cats[k] for a in steps for k in a.rles} - distractors:
            gt_ids, tr_ids, sims = [], [], []
            for a in steps:
                g = [k for k in a.rles if cats[k] == c]
                p = [
                    trk
                    for trk in pred.tracks
                    if trk.masks[a.frame] is not None
                    and trk.track_id in cats
                    and cats[trk.track_id] == c
                    and any(trk.track_id in b.rles for b in steps)
                ]
                gt_ids.append(np.array(g, int))
                tr_ids.append(np.array([trk.track_id for trk in p], int))
                s = mask_utils.iou([a.rles[k] for k in g], [trk.masks[a.frame] for trk in p], [0] * len(p))
                sims.append(np.asarray(s, float).reshape(len(g), len(p)))
            ug = np.unique(np.concatenate(gt_ids))
            ut = np.unique(np.concatenate(tr_ids)) if any(len(x) for x in tr_ids) else np.zeros(0, int)
            data = {
                "gt_ids": [np.searchsorted(ug, x) for x in gt_ids],
                "tracker_ids": [np.searchsorted(ut, x) for x in tr_ids],
                "similarity_scores": sims,
                "num_gt_ids": len(ug),
                "num_tracker_ids": len(ut),
                "num_gt_dets": sum(map(len, gt_ids)),
                "num_tracker_dets": sum(map(len, tr_ids)),
            }
            per_class_seq.setdefault(c, {})[record.video_id] = metric.eval_sequence(data)
    return {c: metric.combine_sequences(v) for c, v in per_class_seq.items()}


def reference_davis_semi(gt_maps: list[np.ndarray], pred_maps: list[np.ndarray]) -> tuple[dict, dict]:
    """vos-benchmark's Evaluator over the scored frames' label maps (uint8): per object J and F means (x100)."""
    from vos_benchmark.evaluator import Evaluator

    ev = Evaluator(boundary=0.008)
    for pred_map, gt_map in zip(pred_maps, gt_maps):
        ev.feed_frame(pred_map, gt_map)
    return ev.conclude()


# ----------------------------------------------------------------------------------------------------------
# bench workloads: 480p videos with up to 5 objects of realistic sizes (a tenth to a half of the frame side)
# ----------------------------------------------------------------------------------------------------------


def _shape(rng: np.random.Generator, ry: int, rx: int) -> np.ndarray:
    """A bool ellipse or rectangle of half-sizes (ry, rx), sometimes with a hole (not convex)."""
    yy, xx = np.mgrid[-ry : ry + 1, -rx : rx + 1]
    if rng.random() < 0.5:
        m = (yy / ry) ** 2 + (xx / rx) ** 2 <= 1
    else:
        m = np.ones(yy.shape, bool)
    if rng.random() < 0.25:
        m &= (yy / ry) ** 2 + (xx / rx) ** 2 > 0.15
    return m


def _place(shape: np.ndarray, y: int, x: int, h: int, w: int) -> np.ndarray:
    """A full frame bool mask with `shape` pasted with its top-left corner at (y, x), clipped."""
    out = np.zeros((h, w), bool)
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + shape.shape[0], h), min(x + shape.shape[1], w)
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = shape[y0 - y : y1 - y, x0 - x : x1 - x]
    return out


def _moving_objects(rng: np.random.Generator, n_obj: int, h: int, w: int, n: int, absent: float) -> list[list]:
    """Per object, per frame a full-frame bool mask or None (absent)."""
    out = []
    for _ in range(n_obj):
        ry, rx = int(rng.integers(h // 20, h // 4)), int(rng.integers(w // 30, w // 6))
        shape = _shape(rng, ry, rx)
        y, x = int(rng.integers(0, h - 2 * ry)), int(rng.integers(0, w - 2 * rx))
        vy, vx = rng.integers(-4, 5, size=2)
        out.append([None if rng.random() < absent else _place(shape, y + vy * t, x + vx * t, h, w) for t in range(n)])
    return out


def _noisy(rng: np.random.Generator, m: np.ndarray) -> np.ndarray:
    """A prediction of mask m: shifted by a few pixels, sometimes eroded."""
    dy, dx = rng.integers(-6, 7, size=2)
    p = np.roll(m, (int(dy), int(dx)), axis=(0, 1))
    if rng.random() < 0.3:
        p = p & np.roll(p, 2, 0) & np.roll(p, -2, 1)
    return p


def ytvis_video(rng: np.random.Generator, vid: int, h: int, w: int, n: int, n_obj: int = 5):
    """(VideoRecord with RLE GT, VideoPrediction): n_obj GT tubes in 3 categories (some crowd), 1-2 noisy
    hypotheses per object with class errors, and false tracks."""
    objects = _moving_objects(rng, n_obj, h, w, n, absent=0.1)
    gt_rles = [[None if m is None else enc(m) for m in frames] for frames in objects]
    anns = [
        FrameAnnotation(t, rles={k + 1: gt_rles[k][t] for k in range(n_obj)},
                        track_ids=frozenset(k + 1 for k in range(n_obj) if gt_rles[k][t] is not None))
        for t in range(n)
    ]  # fmt: skip
    cats = [int(rng.integers(1, 4)) for _ in range(n_obj)]
    tracks = {k + 1: TrackInfo(k + 1, cats[k], bool(rng.random() < 0.05)) for k in range(n_obj)}
    record = VideoRecord(str(vid), FrameSource("images", names=[f"{t:05d}" for t in range(n)]), h, w,
                         tracks=tracks, annotations=anns)  # fmt: skip
    preds = []
    for k, frames in enumerate(objects):
        for _ in range(int(rng.integers(1, 3))):
            masks = [None if m is None or rng.random() < 0.1 else enc(_noisy(rng, m)) for m in frames]
            cat = cats[k] if rng.random() < 0.8 else int(rng.integers(1, 4))
            preds.append((cat, masks))
    for frames in _moving_objects(rng, int(rng.integers(0, 4)), h, w, n, absent=0.2):  # false tracks
        preds.append((int(rng.integers(1, 4)), [None if m is None else enc(m) for m in frames]))
    tracks_p = [TrackPrediction(i + 1, c, float(rng.random()), m) for i, (c, m) in enumerate(preds)]
    return record, VideoPrediction(str(vid), h, w, record.frames.names, tracks_p)


def davis_video(rng: np.random.Generator, vid: str, h: int, w: int, n: int, n_obj: int = 5):
    """(VideoRecord whose annotations decode to precomputed FrameLabels, VideoPrediction with one track per
    object, ids 1..n_obj, GT label maps): objects are painted in order (later ones occlude), every object is
    visible in the first two frames; predictions are shifted/eroded, with identity swaps and dropped frames."""
    objects = _moving_objects(rng, n_obj, h, w, n, absent=0.05)
    for k, frames in enumerate(objects):
        for t in (0, 1):
            if frames[t] is None:
                frames[t] = next((m for m in frames if m is not None), _place(np.ones((5, 5), bool), 10 * k, 10, h, w))
    maps = []
    for t in range(n):
        lab = np.zeros((h, w), np.uint8)
        for k in range(n_obj):
            if objects[k][t] is not None:
                lab[objects[k][t]] = k + 1
        if t < 2:  # vos-benchmark counts an object from the first frame it sees it in: all visible in 0 and 1
            for k in range(n_obj):
                if not (lab == k + 1).any():
                    lab[5 * k, 0] = k + 1
        maps.append(lab)
    anns = []
    for t, lab in enumerate(maps):
        ids = [int(v) for v in np.unique(lab) if v]
        labels = FrameLabels(masks={k: lab == k for k in ids})
        anns.append(FrameAnnotation(t, label_map=f"{vid}/{t:05d}.png", decoder=lambda _p, fl=labels: fl,
                                    track_ids=frozenset(ids)))  # fmt: skip
    record = VideoRecord(vid, FrameSource("images", names=[f"{t:05d}" for t in range(n)]), h, w,
                         tracks={k: TrackInfo(k) for k in range(1, n_obj + 1)}, annotations=anns)  # fmt: skip
    tracks = []
    for k in range(1, n_obj + 1):
        masks = []
        for t in range(n):
            src = int(rng.integers(1, n_obj + 1)) if rng.random() < 0.1 else k
            m = maps[t] == src
            masks.append(None if rng.random() < 0.08 or not m.any() else enc(_noisy(rng, m)))
        tracks.append(TrackPrediction(k, None, float(rng.random()), masks))
    return record, VideoPrediction(vid, h, w, record.frames.names, tracks), maps


def burst_video(rng: np.random.Generator, vid: int, h: int, w: int, n: int, vocab: list[int], n_obj: int = 5):
    """(VideoRecord, VideoPrediction) for exemplar-guided BURST: n_obj GT tracks annotated every other frame,
    predictions under the GT ids with identity switches, misses, and masks where the GT has none."""
    objects = _moving_objects(rng, n_obj, h, w, n, absent=0.15)
    annotated = list(range(0, n, 2))
    cats = {k + 1: int(rng.choice(vocab)) for k in range(n_obj)}
    anns = [
        FrameAnnotation(t, rles={k + 1: enc(objects[k][t]) for k in range(n_obj) if objects[k][t] is not None},
                        track_ids=frozenset(k + 1 for k in range(n_obj) if objects[k][t] is not None))
        for t in annotated
    ]  # fmt: skip
    record = VideoRecord(str(vid), FrameSource("images", names=[f"{t:05d}" for t in range(n)]), h, w,
                         tracks={k: TrackInfo(k, c) for k, c in cats.items()}, annotations=anns)  # fmt: skip
    tracks = []
    for k in range(n_obj):
        masks = []
        for t in range(n):
            src = int(rng.integers(0, n_obj)) if rng.random() < 0.1 else k
            m = objects[src][t]
            if m is None or rng.random() < 0.1:
                masks.append(enc(_place(np.ones((9, 9), bool), int(rng.integers(0, h)), int(rng.integers(0, w)), h, w))
                             if rng.random() < 0.3 else None)  # fmt: skip
            else:
                masks.append(enc(_noisy(rng, m)))
        tracks.append(TrackPrediction(k + 1, None, float(rng.random()), masks))
    return record, VideoPrediction(str(vid), h, w, record.frames.names, tracks)
