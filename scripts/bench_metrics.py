"""Time vidseg's metrics against independent references on the same inputs, and assert equal values.

    .venv/bin/python scripts/bench_metrics.py [--json out.json] [--only vpq_vipseg,stq_kitti] [--scale 1.0]

Workloads (480x854): ytvis / burst 30 videos x 30 frames x 5 objects (BURST annotates every other frame),
davis 10 videos x 30 frames x 5 objects, the dense metrics fewer videos for their slow pure-Python
references (see `main`). References, run in the same process on the same data:
- ytvis: pycocotools' COCOeval with the video IoU from maskUtils.merge/area per pair and frame (ytvoseval);
- davis: vos-benchmark's Evaluator (semi-supervised, frames 1..T-2), per-object J and F means;
- burst: trackeval's HOTA.eval_sequence per (video, class), mask IoU from pycocotools;
- vpq / stq / miou: the official-style implementations of scripts/_dense_references.py.
Fairness: each side's *input decoding* is outside both timings. GT annotations are decoded once before
timing (`ann.decode()` then returns the cached FrameLabels, as a reader's PNG decoding would be shared);
the references get their input formats prebuilt (DAVIS label maps of GT and prediction, KITTI-STEP
panoptic labels, VPS/VIPSeg id maps with segments_info). Everything the metric itself does - painting GT
label maps from masks, decoding prediction RLEs, per-frame counting - is inside "ours".
`--json PATH` writes {benchmark: {"ours_s", "reference_s", "speedup"}}; `--repeat N` keeps each side's best
(the sides interleaved).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "src"))

from _dense_references import (  # noqa: E402
    ReferenceSTQ,
    kitti_labels,
    make_gt_video,
    make_prediction,
    official_vps_frames,
    random_panoptic_video,
    reference_miou,
    reference_vc_windows,
    reference_vpq,
    vipseg_label_maps,
    vipseg_segments,
)
from _metric_references import (  # noqa: E402
    burst_video,
    davis_video,
    reference_davis_semi,
    reference_mask_iou,
    reference_stats,
    ytvis_video,
)
from vidseg.data.records import IGNORE_LABEL, Category, FrameAnnotation, VideoRecord  # noqa: E402

H, W = 480, 854
CATS = [Category(0, "road", False), Category(1, "sky", False), Category(2, "building", False),
        Category(3, "vegetation", False), Category(4, "car", True), Category(5, "person", True),
        Category(6, "bicycle", True)]  # fmt: skip
BURST_VOCAB = [1, 2, 3, 4, 13, 34, 20]  # common, uncommon and a distractor id
Bench = tuple[Callable[[], dict], Callable[[], dict], float]


def timed_pair(ours: Callable[[], object], ref: Callable[[], object], repeat: int) -> tuple[float, Any, float, Any]:
    """Best of `repeat` timings of each side, the sides interleaved (a shared machine's load drifts)."""
    best_o = best_r = float("inf")
    out_o = out_r = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out_o = ours()
        t1 = time.perf_counter()
        out_r = ref()
        t2 = time.perf_counter()
        best_o, best_r = min(best_o, t1 - t0), min(best_r, t2 - t1)
    return best_o, out_o, best_r, out_r


def check_equal(name: str, ours: dict, ref: dict, tol: float = 1e-9) -> None:
    assert ref, name
    for key, value in ref.items():
        a = ours[key]
        if (isinstance(value, float) and np.isnan(value)) or (isinstance(a, float) and np.isnan(a)):
            assert np.isnan(value) and np.isnan(a), (name, key, a, value)
        else:
            assert abs(a - value) <= tol * max(1.0, abs(value)), (name, key, a, value)


def predecoded(record: VideoRecord) -> VideoRecord:
    """The record with every annotation decoded once: `decode()` returns the cached FrameLabels."""
    anns = []
    for ann in record.annotations:
        labels = ann.decode()
        anns.append(FrameAnnotation(ann.frame, label_map=ann.label_map or Path("cached"),
                                    decoder=lambda _p, fl=labels: fl, track_ids=ann.track_ids))  # fmt: skip
    record.annotations = anns
    return record


def bench_vpq(rng: np.random.Generator, n_videos: int, windows: tuple[int, ...], frames: int) -> Bench:
    from vidseg.metrics.vpq import VPQ

    data = [random_panoptic_video(rng, frames, H, W, CATS, num_tracks=5) for _ in range(n_videos)]
    gts = [predecoded(make_gt_video(f"v{i}", d[0], d[1])) for i, d in enumerate(data)]
    preds = [make_prediction(f"v{i}", d[2], d[3], g.frames.names) for i, (d, g) in enumerate(zip(data, gts))]
    official = [official_vps_frames(*d, CATS) for d in data]

    def ours() -> dict:
        m = VPQ(CATS, windows=windows)
        for p, g in zip(preds, gts):
            m.update(p, g)
        return m.compute()

    return ours, lambda: reference_vpq(official, CATS, windows), 1e-9


def bench_stq(rng: np.random.Generator, n_videos: int, variant: str, frames: int) -> Bench:
    from vidseg.metrics.stq import STQ

    data = [random_panoptic_video(rng, frames, H, W, CATS, num_tracks=5, crowd=variant == "kitti")
            for _ in range(n_videos)]  # fmt: skip
    gts = [predecoded(make_gt_video(f"v{i}", d[0], d[1])) for i, d in enumerate(data)]
    preds = [make_prediction(f"v{i}", d[2], d[3], g.frames.names) for i, (d, g) in enumerate(zip(data, gts))]
    things = [c.id for c in CATS if c.isthing]
    isthing = {c.id: c.isthing for c in CATS}
    if variant == "kitti":  # the official inputs: panoptic labels (KITTI-STEP PNGs) / raw ids + segments_info
        inputs = [[(kitti_labels(a, b), kitti_labels(c, d)) for a, b, c, d in zip(*v)] for v in data]
    else:
        inputs = [([vipseg_segments(a, b, isthing) for a, b in zip(gs, gi)],
                   [vipseg_segments(c, d, None) for c, d in zip(ps, pi)]) for gs, gi, ps, pi in data]  # fmt: skip

    def ours() -> dict:
        m = STQ(CATS, variant=variant)
        for p, g in zip(preds, gts):
            m.update(p, g)
        return {k: v for k, v in m.compute().items() if "/" not in k}

    def ref() -> dict:
        r = ReferenceSTQ(len(CATS), things)
        for i, video in enumerate(inputs):
            pairs = video if variant == "kitti" else list(zip(vipseg_label_maps(video[0]), vipseg_label_maps(video[1])))
            for a, b in pairs:
                r.update(a, b, i)
        res = r.result()
        return {k: res[k] for k in ("STQ", "AQ", "SQ_IoU")}

    return ours, ref, 1e-9


def bench_miou(rng: np.random.Generator, n_videos: int, frames: int) -> Bench:
    from vidseg.metrics.miou import SemanticMIoU

    cats = [Category(i, f"c{i}", False) for i in range(20)]
    data = []
    for _ in range(n_videos):
        base = np.kron(rng.integers(0, 19, (12, 20)), np.ones((40, 43), np.int64))[:H, :W]
        base = np.pad(base, ((0, 0), (0, W - base.shape[1])), mode="edge").astype(np.int32)
        gs, ps = [], []
        for t in range(frames):
            g = np.roll(base, t // 3, axis=1)
            g = np.where(rng.random(g.shape) < 0.02, IGNORE_LABEL, g).astype(np.int32)
            p = np.where(rng.random(g.shape) < 0.1, rng.integers(0, 20, g.shape), np.roll(base, t // 2, axis=1))
            gs.append(g)
            ps.append(p.astype(np.int32))
        data.append((gs, ps))
    gts = [predecoded(make_gt_video(f"v{i}", gs, [np.zeros_like(x) for x in gs])) for i, (gs, _) in enumerate(data)]
    preds = [make_prediction(f"v{i}", ps, None, g.frames.names) for i, ((_, ps), g) in enumerate(zip(data, gts))]

    def ours() -> dict:
        m = SemanticMIoU(cats, vc_windows=(8, 16))
        for p, g in zip(preds, gts):
            m.update(p, g)
        return m.compute()

    def ref() -> dict:
        pairs, vc8, vc16 = [], [], []
        for gs, ps in data:
            pairs += list(zip(gs, ps))
            vc8 += reference_vc_windows(gs, ps, 8)
            vc16 += reference_vc_windows(gs, ps, 16)
        return {"mIoU": reference_miou(pairs, 20), "mVC_8": float(np.nanmean(vc8)),
                "mVC_16": float(np.nanmean(vc16))}  # fmt: skip

    return ours, ref, 1e-9


def bench_ytvis(rng: np.random.Generator, n_videos: int, frames: int) -> Bench:
    from vidseg.metrics.ytvis_ap import YTVISMeanAP

    areas = ((0.0, 1e10), (0.0, 128.0**2), (128.0**2, 256.0**2), (256.0**2, 1e10))
    data = [ytvis_video(rng, vid, H, W, frames) for vid in range(1, n_videos + 1)]
    records, preds = [d[0] for d in data], [d[1] for d in data]

    def ours() -> dict:
        m = YTVISMeanAP(category_ids=[1, 2, 3], area_ranges=areas)
        for r, p in zip(records, preds):
            m.update(p, r)
        return m.compute()

    def ref() -> dict:
        with contextlib.redirect_stdout(io.StringIO()):
            return reference_stats(records, preds, [1, 2, 3], areas)[0]

    return ours, ref, 1e-9


def bench_davis(rng: np.random.Generator, n_videos: int, frames: int) -> Bench:
    from vidseg.metrics.jf import DavisJF

    data = [davis_video(rng, f"v{i}", H, W, frames) for i in range(n_videos)]
    # the reference's inputs: the DAVIS label maps of the scored frames (GT PNGs and the prediction PNGs a
    # writer produces from the tracks), built before timing
    ref_inputs = [(maps[1:-1], [pred.instance_map(t).astype(np.uint8) for t in range(1, frames - 1)])
                  for _, pred, maps in data]  # fmt: skip

    def ours() -> dict:
        m = DavisJF(mode="semi")
        out = {}
        for record, pred, _ in data:
            j, f = m.video_j_and_f(pred, record)
            for k in range(j.shape[0]):
                out[f"{record.video_id}/{k + 1}/J"] = float(j[k].mean() * 100)
                out[f"{record.video_id}/{k + 1}/F"] = float(f[k].mean() * 100)
        return out

    def ref() -> dict:
        out = {}
        for (record, _, _), (gt_maps, pred_maps) in zip(data, ref_inputs):
            ious, fs = reference_davis_semi(gt_maps, pred_maps)
            for k in ious:
                out[f"{record.video_id}/{k}/J"] = float(ious[k])
                out[f"{record.video_id}/{k}/F"] = float(fs[k])
        return out

    return ours, ref, 1e-9


def bench_burst(rng: np.random.Generator, n_videos: int, frames: int) -> Bench:
    from vidseg.metrics.hota import BurstHOTA

    data = [burst_video(rng, vid, H, W, frames, BURST_VOCAB) for vid in range(1, n_videos + 1)]

    def ours() -> dict:
        m = BurstHOTA(category_ids=BURST_VOCAB, similarity="mask")
        for record, pred in data:
            m.update(pred, record)
        return {f"{c}/{k}": v[k] for c, v in m.per_class().items() for k in ("HOTA", "DetA", "AssA")}

    def ref() -> dict:
        res = reference_mask_iou(data)
        return {f"{c}/{k}": float(100 * r[k].mean()) for c, r in res.items() for k in ("HOTA", "DetA", "AssA")}

    return ours, ref, 1e-9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--only", default="", help="comma-separated subset of benchmark names")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the number of videos")
    parser.add_argument("--repeat", type=int, default=1, help="best of N timings per side")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    def n(videos: int) -> int:
        return max(1, round(videos * args.scale))

    rng = np.random.default_rng(args.seed)
    benches: dict[str, Callable[[], Bench]] = {
        "ytvis": lambda: bench_ytvis(rng, n(30), 30),
        "davis": lambda: bench_davis(rng, n(10), 30),
        "burst": lambda: bench_burst(rng, n(30), 30),
        "vpq_cityscapes": lambda: bench_vpq(rng, n(8), (1, 2, 3, 4), 6),
        "vpq_vipseg": lambda: bench_vpq(rng, n(4), (1, 2, 4, 6, 8), 12),
        "stq_kitti": lambda: bench_stq(rng, n(6), "kitti", 10),
        "stq_vipseg": lambda: bench_stq(rng, n(6), "vipseg", 10),
        "miou_vc": lambda: bench_miou(rng, n(10), 30),
    }
    only = [b for b in args.only.split(",") if b]
    unknown = set(only) - set(benches)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {sorted(benches)}")
    results = {}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}; frames {H}x{W}; scale {args.scale}, best of {args.repeat}; input "
          "decoding (GT FrameLabels, the references' label-map inputs) is outside both timings")  # fmt: skip
    print(f"{'benchmark':16s} {'ours_s':>9s} {'reference_s':>12s} {'speedup':>8s}")
    for name, make in benches.items():
        if only and name not in only:
            continue
        ours_fn, ref_fn, tol = make()
        t_ours, v_ours, t_ref, v_ref = timed_pair(ours_fn, ref_fn, args.repeat)
        check_equal(name, v_ours, v_ref, tol)  # type: ignore[arg-type]
        results[name] = {"ours_s": t_ours, "reference_s": t_ref, "speedup": t_ref / t_ours}
        print(f"{name:16s} {t_ours:9.3f} {t_ref:12.3f} {t_ref / t_ours:7.1f}x", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
