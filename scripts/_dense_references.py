"""Straightforward reference implementations of VPQ, STQ, mIoU and VC written from the published
definitions (reference/formats.md §4.2, §5.4, §6.4-6.5, §7), plus builders of in-memory records.

They follow the official scripts' structure on purpose - per window the stacked id maps are counted with
np.unique and matched through dictionaries; STQ keeps per-sequence dictionaries of label areas - so they
are slow and independent of the vectorised metrics in `vidseg.metrics`. Used by scripts/bench_metrics.py
and by tests/metrics (whose conftest puts scripts/ on sys.path).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vidseg.data.records import (
    IGNORE_LABEL,
    Category,
    DatasetRecord,
    FrameAnnotation,
    FrameLabels,
    FrameSource,
    TrackInfo,
    VideoPrediction,
    VideoRecord,
)

# ----------------------------------------------------------------------------------------------------------
# in-memory records
# ----------------------------------------------------------------------------------------------------------


def make_gt_video(
    video_id: str,
    semantic: list[np.ndarray],
    instance: list[np.ndarray],
    annotated: list[int] | None = None,
    num_frames: int | None = None,
    crowd_tracks: frozenset[int] = frozenset(),
) -> VideoRecord:
    """A VideoRecord whose annotation of frame annotated[i] decodes to (semantic[i], instance[i]):
    track masks = instance ids > 0, semantic as given (IGNORE_LABEL = void)."""
    annotated = list(range(len(semantic))) if annotated is None else annotated
    num_frames = max(annotated) + 1 if num_frames is None else num_frames
    h, w = semantic[0].shape
    tracks: dict[int, TrackInfo] = {}
    anns = []
    for f, sem, inst in zip(annotated, semantic, instance):
        ids = [int(t) for t in np.unique(inst[inst > 0])]
        for t in ids:
            cls = int(np.unique(sem[inst == t])[0])
            tracks.setdefault(t, TrackInfo(track_id=t, category_id=cls, iscrowd=t in crowd_tracks))

        def decode(_path: Path, sem=sem, inst=inst, ids=ids) -> FrameLabels:
            return FrameLabels(
                masks={t: inst == t for t in ids}, semantic=sem.astype(np.int32), void=sem == IGNORE_LABEL
            )

        anns.append(FrameAnnotation(frame=f, label_map=Path(f"{video_id}/{f:05d}.png"), decoder=decode,
                                    track_ids=frozenset(ids)))
    names = [f"{i:05d}" for i in range(num_frames)]
    return VideoRecord(video_id=video_id, frames=FrameSource(kind="images", names=names), height=h, width=w,
                       tracks=tracks, annotations=anns)


def make_prediction(
    video_id: str, semantic: list[np.ndarray], instance: list[np.ndarray] | None, frame_names: list[str]
) -> VideoPrediction:
    """A VideoPrediction with panoptic_maps (instance given) or semantic_maps (instance None)."""
    h, w = semantic[0].shape
    if instance is None:
        return VideoPrediction(video_id=video_id, height=h, width=w, frame_names=frame_names,
                               semantic_maps=[s.astype(np.int32) for s in semantic])
    return VideoPrediction(video_id=video_id, height=h, width=w, frame_names=frame_names,
                           panoptic_maps=[(s.astype(np.int32), i.astype(np.int32))
                                          for s, i in zip(semantic, instance)])


def make_dataset(videos: list[VideoRecord], categories: list[Category], fmt: str) -> DatasetRecord:
    return DatasetRecord(name=fmt, format=fmt, split="val", root=Path("."), categories=categories,
                         videos=videos)


# ----------------------------------------------------------------------------------------------------------
# VPQ (Cityscapes-VPS / VIPSeg): official-style per-window tube matching
# ----------------------------------------------------------------------------------------------------------


def official_vps_frames(
    gt_sem: list[np.ndarray], gt_inst: list[np.ndarray], pred_sem: list[np.ndarray],
    pred_inst: list[np.ndarray], categories: list[Category],
) -> list[tuple[np.ndarray, list[dict], np.ndarray, list[dict]]]:
    """Convert (semantic, instance) maps into the official representation: per frame a GT id map with
    segments_info {id, category_id, iscrowd, area} and a prediction id map with {id, category_id}.
    GT: void -> 0, stuff class c -> id c + 1, crowd (thing without track) -> id c + 1 with iscrowd 1,
    track t -> id 1000 t + c + 1. Prediction: void -> 0, (c, i) -> 1000 i + c + 1."""
    isthing = {c.id: c.isthing for c in categories}
    out = []
    for gs, gi, ps, pi in zip(gt_sem, gt_inst, pred_sem, pred_inst):
        gid = np.where(gs == IGNORE_LABEL, 0, gs.astype(np.int64) + 1 + 1000 * gi.astype(np.int64))
        segs = []
        for v, area in zip(*np.unique(gid, return_counts=True)):
            if v == 0:
                continue
            c, t = int(v % 1000) - 1, int(v // 1000)
            segs.append({"id": int(v), "category_id": c, "iscrowd": int(isthing[c] and t == 0), "area": int(area)})
        pid = np.where(ps == IGNORE_LABEL, 0, ps.astype(np.int64) + 1 + 1000 * pi.astype(np.int64))
        psegs = [{"id": int(v), "category_id": int(v % 1000) - 1} for v in np.unique(pid) if v != 0]
        out.append((gid, segs, pid, psegs))
    return out


def reference_vpq_stats(videos: list[list[tuple]], nframes: int) -> dict[int, dict[str, float]]:
    """Per-class {tp, fp, fn, iou} of windows of `nframes` over videos of official-style frames."""
    offset, void = 1 << 24, 0
    stats: dict[int, dict[str, float]] = {}

    def stat(c: int) -> dict[str, float]:
        return stats.setdefault(c, {"tp": 0, "fp": 0, "fn": 0, "iou": 0.0})

    for frames in videos:
        for start in range(len(frames) - nframes + 1):
            window = frames[start:start + nframes]
            gt_segs: dict[int, dict] = {}
            pred_segs: dict[int, dict] = {}
            for _gid, segs, pid, psegs in window:
                for s in segs:
                    if s["id"] in gt_segs:
                        gt_segs[s["id"]]["area"] += s["area"]
                    else:
                        gt_segs[s["id"]] = dict(s)
                ids, cnts = np.unique(pid, return_counts=True)
                areas = dict(zip(ids.tolist(), cnts.tolist()))
                for s in psegs:
                    if s["id"] in pred_segs:
                        pred_segs[s["id"]]["area"] += areas[s["id"]]
                    else:
                        pred_segs[s["id"]] = dict(s, area=areas[s["id"]])
            stacked = np.stack([f[0] for f in window]).astype(np.uint64) * offset + np.stack(
                [f[2] for f in window]).astype(np.uint64)
            inter = {(int(k) // offset, int(k) % offset): int(n)
                     for k, n in zip(*np.unique(stacked, return_counts=True))}
            gt_matched, pred_matched = set(), set()
            for (g, p), n in inter.items():
                if g not in gt_segs or p not in pred_segs or gt_segs[g]["iscrowd"] == 1:
                    continue
                if gt_segs[g]["category_id"] != pred_segs[p]["category_id"]:
                    continue
                union = pred_segs[p]["area"] + gt_segs[g]["area"] - n - inter.get((void, p), 0)
                iou = n / union
                if iou > 0.5:
                    stat(gt_segs[g]["category_id"])["tp"] += 1
                    stat(gt_segs[g]["category_id"])["iou"] += iou
                    gt_matched.add(g)
                    pred_matched.add(p)
            crowd = {}
            for g, info in gt_segs.items():
                if g in gt_matched:
                    continue
                if info["iscrowd"] == 1:
                    crowd[info["category_id"]] = g
                    continue
                stat(info["category_id"])["fn"] += 1
            for p, info in pred_segs.items():
                if p in pred_matched:
                    continue
                n = inter.get((void, p), 0)
                if info["category_id"] in crowd:
                    n += inter.get((crowd[info["category_id"]], p), 0)
                if n / info["area"] > 0.5:
                    continue
                stat(info["category_id"])["fp"] += 1
    return stats


def reference_vpq(videos: list[list[tuple]], categories: list[Category], windows: tuple[int, ...]) -> dict:
    """VPQ, VPQ_thing, VPQ_stuff (0-100) and PQ_k<k>[_thing|_stuff] per window, official averaging."""
    out: dict[str, float] = {}
    sums = {"": [], "_thing": [], "_stuff": []}
    for n in windows:
        stats = reference_vpq_stats(videos, n)
        for g, want in (("", None), ("_thing", True), ("_stuff", False)):
            pq, count = 0.0, 0
            for c in categories:
                if want is not None and c.isthing != want:
                    continue
                s = stats.get(c.id, {"tp": 0, "fp": 0, "fn": 0, "iou": 0.0})
                if s["tp"] + s["fp"] + s["fn"] == 0:
                    continue
                count += 1
                pq += s["iou"] / (s["tp"] + 0.5 * s["fp"] + 0.5 * s["fn"])
            value = 100 * pq / count if count else float("nan")
            out[f"PQ_k{5 * (n - 1)}{g}"] = value
            sums[g].append(value)
    for g, values in sums.items():
        out[f"VPQ{g}"] = sum(values) / len(values)
    return out


# ----------------------------------------------------------------------------------------------------------
# STQ (deeplab2 numpy STQuality semantics)
# ----------------------------------------------------------------------------------------------------------


class ReferenceSTQ:
    """Dictionary-based STQ over panoptic labels (semantic << 16) + instance, one sequence id per video."""

    def __init__(self, num_classes: int, things: list[int], ignore: int = IGNORE_LABEL) -> None:
        self.n, self.things, self.ignore = num_classes, things, ignore
        self.conf: dict[object, np.ndarray] = {}
        self.gts: dict[object, dict] = {}
        self.preds: dict[object, dict] = {}
        self.inters: dict[object, dict] = {}

    @staticmethod
    def _count(d: dict, values: np.ndarray) -> None:
        for v, c in zip(*np.unique(values, return_counts=True)):
            d[int(v)] = d.get(int(v), 0) + int(c)

    def update(self, y_true: np.ndarray, y_pred: np.ndarray, seq: object) -> None:
        y_true, y_pred = y_true.astype(np.int64), y_pred.astype(np.int64)
        s_true, s_pred = y_true >> 16, y_pred >> 16
        s_true = np.where(s_true == self.ignore, self.n, s_true)
        s_pred = np.where(s_pred == self.ignore, self.n, s_pred)
        if seq not in self.conf:
            self.conf[seq] = np.zeros((self.n + 1, self.n + 1), np.int64)
            self.gts[seq], self.preds[seq], self.inters[seq] = {}, {}, {}
        np.add.at(self.conf[seq], (s_true.ravel(), s_pred.ravel()), 1)
        gt_thing = np.isin(s_true, self.things)
        pred_thing = np.isin(s_pred, self.things)
        crowd = gt_thing & ((y_true & 0xFFFF) == 0)
        gt_mask, pred_mask = gt_thing & ~crowd, pred_thing & ~crowd
        self._count(self.preds[seq], y_pred[pred_mask])
        self._count(self.gts[seq], y_true[gt_mask])
        both = gt_mask & pred_mask
        self._count(self.inters[seq], y_true[both] * (1 << 24) + y_pred[both])

    @staticmethod
    def _miou(conf: np.ndarray) -> float:
        tp = np.diag(conf).astype(float)
        union = conf.sum(0) + conf.sum(1) - tp
        return float(np.sum(tp / np.maximum(union, 1e-15)) / np.count_nonzero(union))

    def result(self) -> dict[str, object]:
        aq_seq, tubes = [], []
        for seq, gts in self.gts.items():
            outer = 0.0
            for g, g_size in gts.items():
                inner = 0.0
                for p, p_size in self.preds[seq].items():
                    tpa = self.inters[seq].get(g * (1 << 24) + p)
                    if tpa:
                        inner += tpa * (tpa / (tpa + (p_size - tpa) + (g_size - tpa)))
                outer += inner / g_size
            aq_seq.append(outer)
            tubes.append(len(gts))
        total = np.zeros((self.n + 1, self.n + 1), np.int64)
        iou_seq = []
        for conf in self.conf.values():
            conf = conf.copy()
            conf[self.n, :] = 0
            total += conf
            iou_seq.append(self._miou(conf))
        aq = sum(aq_seq) / max(sum(tubes), 1e-15)
        iou = self._miou(total)
        per_aq = [a / max(t, 1e-15) for a, t in zip(aq_seq, tubes)]
        return {"STQ": float(np.sqrt(aq * iou)), "AQ": aq, "SQ_IoU": iou, "AQ_per_seq": per_aq,
                "SQ_IoU_per_seq": iou_seq, "STQ_per_seq": [float(np.sqrt(a * i)) for a, i in zip(per_aq, iou_seq)],
                "ids": list(self.gts)}


def kitti_labels(sem: np.ndarray, inst: np.ndarray) -> np.ndarray:
    """KITTI-STEP panoptic label (semantic << 16) + instance (instance 0 where void)."""
    return (sem.astype(np.int64) << 16) + np.where(sem == IGNORE_LABEL, 0, inst.astype(np.int64))


def vipseg_segments(
    sem: np.ndarray, inst: np.ndarray, isthing: dict[int, bool] | None
) -> tuple[np.ndarray, list[dict]]:
    """A VIPSeg-style frame: raw value per pixel (stuff c -> c + 1, thing (c, i) -> 100 (c + 1) + i with
    i < 100, void -> 0) used as segment id, and segments_info listed in ascending raw value. With
    isthing=None (predictions) every (c, i) pair gets the id 1000 i + c + 1."""
    sem64, inst64 = sem.astype(np.int64), inst.astype(np.int64)
    if isthing is None:
        raw = np.where(sem == IGNORE_LABEL, 0, 1000 * inst64 + sem64 + 1)
    else:
        thing = np.isin(sem64, [c for c, t in isthing.items() if t])
        raw = np.where(sem == IGNORE_LABEL, 0, np.where(thing, 100 * (sem64 + 1) + inst64, sem64 + 1))
    segs = [{"id": int(v), "category_id": int(sem[raw == v].flat[0])} for v in np.unique(raw) if v != 0]
    return raw, segs


def vipseg_label_maps(frames: list[tuple[np.ndarray, list[dict]]]) -> list[np.ndarray]:
    """eval_stq_vspw.py's rebuilding of label maps: semantic = the segment's category, instance = index of
    the segment id in order of first appearance over the video's segments_info lists; unlisted -> 255/255."""
    order: list[int] = []
    out = []
    for ids, segs in frames:
        sem = np.full(ids.shape, IGNORE_LABEL, np.int64)
        ins = np.full(ids.shape, 255, np.int64)
        for s in segs:
            if s["id"] not in order:
                order.append(s["id"])
            m = ids == s["id"]
            sem[m] = s["category_id"]
            ins[m] = order.index(s["id"])
        out.append((sem << 16) + ins)
    return out


# ----------------------------------------------------------------------------------------------------------
# VSPW mIoU and VC
# ----------------------------------------------------------------------------------------------------------


def reference_miou(pairs: list[tuple[np.ndarray, np.ndarray]], num_classes: int) -> float:
    """Official Evaluator: confusion over GT in 0..C-1, IoU averaged over classes present in the GT."""
    conf = np.zeros((num_classes, num_classes))
    for gt, pred in pairs:
        m = (gt >= 0) & (gt < num_classes)
        conf += np.bincount(num_classes * gt[m].astype(int) + pred[m],
                            minlength=num_classes**2).reshape(num_classes, num_classes)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.diag(conf) / (conf.sum(1) + conf.sum(0) - np.diag(conf))
    present = conf.sum(1) > 0
    return float(np.nansum(iou * present) / present.sum())


def reference_vc_windows(gts: list[np.ndarray], preds: list[np.ndarray], n: int) -> list[float]:
    """Official get_common: window scores for starts 0 .. T - n - 1 (NaN when no GT-consistent pixel)."""
    accs = []
    for i in range(len(gts) - n):
        g_common = np.ones(gts[0].shape, bool)
        p_common = np.ones(gts[0].shape, bool)
        for j in range(1, n):
            g_common &= gts[i] == gts[i + j]
            p_common &= preds[i] == preds[i + j]
        with np.errstate(divide="ignore", invalid="ignore"):
            accs.append((g_common & p_common).sum() / g_common.sum())
    return accs


# ----------------------------------------------------------------------------------------------------------
# random noisy data
# ----------------------------------------------------------------------------------------------------------


def random_panoptic_video(
    rng: np.random.Generator, num_frames: int, height: int, width: int, categories: list[Category],
    num_tracks: int = 4, pred_void: bool = True, crowd: bool = True,
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """(gt_sem, gt_inst, pred_sem, pred_inst) lists: stuff bands, moving thing rectangles (tracks 1..N,
    some absent in some frames), a crowd rectangle, void; the prediction jitters every region, renumbers
    tracks, switches ids and classes at random, adds spurious segments and pixel noise."""
    stuff = [c.id for c in categories if not c.isthing]
    things = [c.id for c in categories if c.isthing]
    n_bands = 3
    band_cls = rng.choice(stuff, n_bands)
    edges = np.sort(rng.integers(1, width - 1, n_bands - 1))
    tracks = []
    for t in range(1, num_tracks + 1):
        hh, ww = rng.integers(height // 5, height // 2), rng.integers(width // 6, width // 2)
        tracks.append({"id": t, "cls": int(rng.choice(things)), "y": rng.integers(0, height - hh),
                       "x": rng.integers(0, width - ww), "h": hh, "w": ww, "vy": rng.integers(-2, 3),
                       "vx": rng.integers(-2, 3), "present": rng.random(num_frames) > 0.15})
    crowd_cls = int(rng.choice(things))
    pred_id = {tr["id"]: int(rng.integers(1, 50)) * 10 + tr["id"] for tr in tracks}
    gs, gi, ps, pi = [], [], [], []
    for f in range(num_frames):
        g_sem = np.zeros((height, width), np.int32)
        p_sem = np.zeros((height, width), np.int32)
        jitter = rng.integers(-2, 3, n_bands - 1)
        bounds = [0, *edges.tolist(), width]
        pbounds = [0, *np.clip(edges + jitter, 0, width).tolist(), width]
        for b in range(n_bands):
            g_sem[:, bounds[b]:bounds[b + 1]] = band_cls[b]
            p_sem[:, pbounds[b]:pbounds[b + 1]] = band_cls[b] if rng.random() > 0.1 else rng.choice(stuff)
        g_inst = np.zeros((height, width), np.int32)
        p_inst = np.zeros((height, width), np.int32)
        cy, cx = rng.integers(0, height // 2), rng.integers(0, width // 2)
        if crowd:
            g_sem[cy:cy + height // 4, cx:cx + width // 4] = crowd_cls
        for tr in tracks:
            if not tr["present"][f]:
                continue
            y = int(np.clip(tr["y"] + f * tr["vy"], 0, height - tr["h"]))
            x = int(np.clip(tr["x"] + f * tr["vx"], 0, width - tr["w"]))
            g_sem[y:y + tr["h"], x:x + tr["w"]] = tr["cls"]
            g_inst[y:y + tr["h"], x:x + tr["w"]] = tr["id"]
            if rng.random() < 0.1:
                continue  # missed in the prediction
            if rng.random() < 0.15:
                pred_id[tr["id"]] += 1000  # id switch from here on
            cls = tr["cls"] if rng.random() > 0.1 else int(rng.choice(things))
            dy, dx = rng.integers(-3, 4, 2)
            dh, dw = rng.integers(-2, 3, 2)
            y0, x0 = max(0, y + dy), max(0, x + dx)
            p_sem[y0:y0 + tr["h"] + dh, x0:x0 + tr["w"] + dw] = cls
            p_inst[y0:y0 + tr["h"] + dh, x0:x0 + tr["w"] + dw] = pred_id[tr["id"]]
        if rng.random() < 0.5:  # a spurious predicted segment
            y, x = rng.integers(0, height - 4), rng.integers(0, width - 4)
            p_sem[y:y + 4, x:x + 4] = rng.choice(things)
            p_inst[y:y + 4, x:x + 4] = 999
        vy, vx = rng.integers(0, height - 3), rng.integers(0, width - 3)
        g_sem[vy:vy + 3, vx:vx + 3] = IGNORE_LABEL
        g_sem[rng.random((height, width)) < 0.03] = IGNORE_LABEL
        g_inst[g_sem == IGNORE_LABEL] = 0
        noise = rng.random((height, width)) < 0.05
        p_sem[noise] = rng.choice([c.id for c in categories], int(noise.sum()))
        p_inst[noise] = 0
        if pred_void:
            pv = rng.random((height, width)) < 0.02
            p_sem[pv] = IGNORE_LABEL
            p_inst[pv] = 0
        gs.append(g_sem)
        gi.append(g_inst)
        ps.append(p_sem)
        pi.append(p_inst)
    return gs, gi, ps, pi
