"""Small hand-built ground truth for the format round-trip tests (64 x 80 px, 2 videos, 6-7 frames).

Video "alpha" (6 frames): track 1 (cat 1) moves right through every frame; track 3 (cat 1) is there in
frames 0-3 and leaves; track 2 (cat 2) enters at frame 2 and occludes track 1 (pasted last).
Video "beta" (7 frames): track 1 (cat 3) in every frame; track 2 (cat 2) leaves after frame 4.
In both, frame 0 holds the largest track id (a valid DAVIS object count N).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from vidseg.data.records import (
    IGNORE_LABEL,
    Category,
    FrameAnnotation,
    FrameLabels,
    GroundTruthVideo,
    Point,
    TrackPrediction,
    VideoPrediction,
)

H, W = 64, 80
CATEGORIES = [Category(1, "person"), Category(2, "dog"), Category(3, "car")]


def _box(h0: int, h1: int, w0: int, w1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[h0:h1, w0:w1] = True
    return m


def _disc(cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _frames(n: int, seed: int) -> list[np.ndarray]:
    """Smooth random frames (JPEG-friendly)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    out = []
    for _ in range(n):
        base = rng.integers(40, 200, size=3)
        grad = (np.stack([yy, xx, yy + xx], axis=-1) * rng.uniform(0.2, 0.8, size=3)).astype(np.int64)
        out.append(np.clip(base + grad, 0, 255).astype(np.uint8))
    return out


def _video(
    video_id: str,
    layers: list[list[tuple[int, np.ndarray]]],
    cats: dict[int, int],
    seed: int,
    points: dict[int, tuple[int, Point]],
) -> GroundTruthVideo:
    imaps, smaps = [], []
    for frame_layers in layers:
        imap = np.zeros((H, W), dtype=np.int32)
        for tid, mask in frame_layers:  # later layers occlude earlier ones
            imap[mask] = tid
        smap = np.zeros((H, W), dtype=np.int32)
        for tid, cat in cats.items():
            smap[imap == tid] = cat
        smap[:2, :] = IGNORE_LABEL  # a void strip (used by the DAVIS void option)
        imaps.append(imap)
        smaps.append(smap)
    return GroundTruthVideo(
        video_id=video_id,
        frames=_frames(len(layers), seed),
        instance_maps=imaps,
        semantic_maps=smaps,
        track_categories=cats,
        points=points,
    )


def make_videos() -> list[GroundTruthVideo]:
    """The two hand-built videos described in the module docstring."""
    alpha_layers = []
    for t in range(6):
        layers = [(1, _box(10, 40, 4 + 6 * t, 30 + 6 * t))]
        if t <= 3:
            layers.append((3, _disc(48, 60, 8)))
        if t >= 2:
            layers.append((2, _box(20, 34, 20, 44)))
        alpha_layers.append(layers)
    beta_layers = []
    for t in range(7):
        layers = [(1, _disc(30, 20 + 4 * t, 12))]
        if t <= 4:
            layers.append((2, _box(40, 60, 50 - 3 * t, 70 - 3 * t)))
        beta_layers.append(layers)
    alpha = _video("alpha", alpha_layers, {1: 1, 2: 2, 3: 1}, seed=1, points={1: (0, Point(15.0, 25.0))})
    beta = _video("beta", beta_layers, {1: 3, 2: 2}, seed=2, points={2: (0, Point(60.0, 50.0))})
    return [alpha, beta]


def gt_masks(video: GroundTruthVideo, t: int) -> dict[int, np.ndarray]:
    """Track id -> non-empty bool mask at frame t."""
    imap = video.instance_maps[t]
    return {int(k): imap == k for k in np.unique(imap) if k != 0}


def assert_decodes_to_gt(
    ann: FrameAnnotation, video: GroundTruthVideo, track_map: dict[int, int] | None = None
) -> FrameLabels:
    """Decode `ann` and assert its masks are exactly the GT tracks of its frame (ids, `track_ids`, pixels),
    GT track ids renamed through `track_map` when the format renumbers them; returns the decoded labels for
    format-specific checks."""
    expected = gt_masks(video, ann.frame)
    if track_map is not None:
        expected = {track_map[k]: m for k, m in expected.items()}
    labels = ann.decode()
    assert set(labels.masks) == set(expected) == set(ann.track_ids)
    for k, m in expected.items():
        np.testing.assert_array_equal(labels.masks[k], m)
    return labels


def rle(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")}


def predictions_from_gt(
    videos: list[GroundTruthVideo], video_ids: list[str], scores: bool = True, categories: bool = True
) -> list[VideoPrediction]:
    """Perfect predictions (non-overlapping, one track per GT track) with distinct scores."""
    preds = []
    for video, vid in zip(videos, video_ids):
        tracks = []
        for k in sorted(video.track_categories):
            masks = [rle(m == k) if (m == k).any() else None for m in video.instance_maps]
            tracks.append(
                TrackPrediction(
                    track_id=k,
                    category_id=video.track_categories[k] if categories else None,
                    score=(0.9 - 0.1 * k) if scores else 1.0,
                    masks=masks,
                )
            )
        preds.append(
            VideoPrediction(
                video_id=vid,
                height=H,
                width=W,
                frame_names=[f"{t:05d}" for t in range(len(video.frames))],
                tracks=tracks,
            )
        )
    return preds


def assert_predictions_equal(got: list[VideoPrediction], expected: list[VideoPrediction]) -> None:
    """Same videos, tracks, classes, scores and decoded masks (RLE strings may differ only if masks do)."""
    assert [p.video_id for p in got] == [p.video_id for p in expected]
    for g, e in zip(got, expected):
        assert (g.height, g.width) == (e.height, e.width)
        assert [t.track_id for t in g.tracks] == [t.track_id for t in e.tracks]
        for gt_, et in zip(g.tracks, e.tracks):
            assert gt_.category_id == et.category_id
            assert gt_.score == et.score
            assert len(gt_.masks) == len(et.masks)
            for gm, em in zip(gt_.masks, et.masks):
                assert (gm is None) == (em is None)
                if gm is not None:
                    np.testing.assert_array_equal(_dec(gm), _dec(em))


def _dec(r: dict) -> np.ndarray:
    c = r["counts"]
    return mask_utils.decode({"size": r["size"], "counts": c.encode() if isinstance(c, str) else c}).astype(
        bool
    )


def edit_json(path: Path, edit: Callable[[Any], object], out: Path | None = None) -> Path:
    """Load the JSON file `path`, let `edit` change the data in place, write it to `out` (default: back to
    `path`) and return where it went: the way the tests build damaged inputs."""
    data = json.loads(Path(path).read_text())
    edit(data)
    target = Path(out) if out is not None else Path(path)
    target.write_text(json.dumps(data))
    return target
