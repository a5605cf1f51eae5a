"""Where a VOS model loses J: per-object region IoU of DAVIS-format results, broken down by the number of
objects in the video, the object's visible area, and the frame index after the prompt.

Reads the ground truth through our DAVIS reader and the predictions as DAVIS palette PNGs (what
`python -m vidseg.evaluate` writes under `<run>/results/<dataset>/`), at the GT resolution. Frames are scored as
DAVIS does (first and last frame excluded; a frame where the object is absent and not predicted scores 1). Only
objects prompted on the first frame are counted (the DAVIS 2017 protocol).

    python -m vidseg.evaluate ckpt=RUN/checkpoints/last.ckpt hydra.run.dir=EVAL
    python scripts/vos_breakdown.py --gt DAVIS_ROOT --pred EVAL/results/syn_davis [--split val]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from vidseg.data.formats import get_format

AREA_BINS = [(1, 50), (50, 150), (150, 400), (400, 1000), (1000, None)]


def label_map(video, t: int) -> np.ndarray:
    """int32 [H, W] track id per pixel (0 = none) of frame t; an unannotated frame is an error."""
    ann = video.annotation_at(t)
    if ann is None:
        raise ValueError(f"GT video {video.video_id!r}: frame {t} is not annotated (DAVIS annotates every frame)")
    out = np.zeros((video.height, video.width), dtype=np.int32)
    for track, mask in ann.decode().masks.items():
        out[mask] = track
    return out


def frame_ious(gt: np.ndarray, pred: np.ndarray, track: int) -> np.ndarray:
    """Region IoU of `track` on every frame but the first and last; [T] label maps -> [T - 2]."""
    g, p = gt[1:-1] == track, pred[1:-1] == track
    inter = (g & p).sum((1, 2))
    union = (g | p).sum((1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def _bin(bounds: tuple[int, int | None]) -> str:
    return f"[{bounds[0]}, {bounds[1] or 'inf'})"


def breakdown(gt_root: Path, pred_root: Path, split: str) -> dict:
    record = get_format("davis").read(gt_root, split)
    per_object: dict[int, list[float]] = defaultdict(list)  # number of objects in the video -> object means
    by_area: dict[str, list[float]] = defaultdict(list)
    by_frame: dict[int, list[float]] = defaultdict(list)
    for video in record.videos:
        gt = np.stack([label_map(video, t) for t in range(video.num_frames)])
        names = list(video.frames.names)
        missing = [n for n in names if not (pred_root / video.video_id / f"{n}.png").is_file()]
        if missing:
            raise FileNotFoundError(f"{pred_root / video.video_id}: no prediction PNG for frame(s) {missing[:3]}")
        pred = np.stack([np.array(Image.open(pred_root / video.video_id / f"{n}.png")) for n in names])
        tracks = [p.track_id for p in video.prompts if p.frame == 0]
        for track in tracks:
            ious = frame_ious(gt, pred, track)
            per_object[len(tracks)].append(float(ious.mean()))
            areas = (gt[1:-1] == track).sum((1, 2))
            for t, (iou, area) in enumerate(zip(ious, areas), start=1):
                if area == 0:
                    by_area["absent"].append(float(iou))
                    continue
                by_frame[t].append(float(iou))
                by_area[next(_bin(b) for b in AREA_BINS if area >= b[0] and (b[1] is None or area < b[1]))].append(
                    float(iou))

    def summary(groups: dict) -> dict:
        return {str(k): {"J": round(float(np.mean(v)), 4), "n": len(v)} for k, v in groups.items()}

    every = [j for v in per_object.values() for j in v]
    by_area = {k: by_area[k] for k in [*map(_bin, AREA_BINS), "absent"] if k in by_area}
    return {
        "J-Mean (objects)": round(float(np.mean(every)), 4),
        "by_objects_in_video": summary(dict(sorted(per_object.items()))),
        "by_visible_area_px": summary(by_area),
        "by_frame_visible": summary({t: by_frame[t] for t in sorted(by_frame) if t <= 8}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gt", type=Path, required=True, help="DAVIS root (JPEGImages/, Annotations/, ImageSets/)")
    ap.add_argument("--pred", type=Path, required=True, help="folder of <video>/<frame>.png palette predictions")
    ap.add_argument("--split", default="val")
    args = ap.parse_args()
    result = breakdown(args.gt, args.pred, args.split)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}))
    for key, groups in result.items():
        if isinstance(groups, dict):
            print(f"{key}: " + ", ".join(f"{g}: J {v['J']:.3f} (n={v['n']})" for g, v in groups.items()))


if __name__ == "__main__":
    main()
