"""Hand-built panoptic ground truth and predictions for the label-map format tests (no generator)."""

from __future__ import annotations

import numpy as np

from vidseg.data.records import IGNORE_LABEL, GroundTruthVideo, TrackPrediction, VideoPrediction

H, W, T = 64, 80, 6


def make_video(
    video_id: str,
    stuff: tuple[int, int],
    tracks: dict[int, int],
    *,
    crowd_class: int | None = None,
    seed: int = 0,
) -> GroundTruthVideo:
    """A 6-frame 64x80 video: rows 0..3 void, stuff[0] above row 32, stuff[1] below; one 10x12 box per
    track moving right 4 px per frame (the third track appears from frame 2 on); an optional crowd box of
    `crowd_class` (thing pixels without a track) at the bottom right."""
    rng = np.random.default_rng(seed)
    frames, instance_maps, semantic_maps = [], [], []
    for t in range(T):
        sem = np.full((H, W), stuff[0], dtype=np.int32)
        sem[32:] = stuff[1]
        sem[:4] = IGNORE_LABEL
        inst = np.zeros((H, W), dtype=np.int32)
        for k, (tid, cls) in enumerate(tracks.items()):
            if k == 2 and t < 2:
                continue
            y0, x0 = 8 + 18 * k, 4 + 4 * t
            inst[y0 : y0 + 10, x0 : x0 + 12] = tid
            sem[y0 : y0 + 10, x0 : x0 + 12] = cls
        if crowd_class is not None:
            sem[54:62, 60:76] = crowd_class
        frames.append(rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8))
        instance_maps.append(inst)
        semantic_maps.append(sem)
    return GroundTruthVideo(
        video_id=video_id,
        frames=frames,
        instance_maps=instance_maps,
        semantic_maps=semantic_maps,
        track_categories=dict(tracks),
    )


def crowd_mask(video: GroundTruthVideo, t: int, thing_ids: set[int]) -> np.ndarray:
    """Thing-class pixels that no track covers."""
    return np.isin(video.semantic_maps[t], list(thing_ids)) & (video.instance_maps[t] == 0)


def panoptic_prediction(
    video: GroundTruthVideo, frame_names: list[str], shift: int = 0, video_id: str | None = None
) -> VideoPrediction:
    """A prediction whose panoptic maps are the GT's (optionally shifted right by `shift` px), with void
    replaced by the stuff below it so that no frame predicts 255."""
    maps = []
    for sem, inst in zip(video.semantic_maps, video.instance_maps):
        s = np.roll(sem, shift, axis=1).copy()
        s[s == IGNORE_LABEL] = video.semantic_maps[0][40, 0]
        maps.append((s, np.roll(inst, shift, axis=1).astype(np.int32)))
    return VideoPrediction(
        video_id=video_id or video.video_id,
        height=video.height,
        width=video.width,
        frame_names=frame_names,
        panoptic_maps=maps,
    )


def track_prediction(video: GroundTruthVideo, frame_names: list[str], video_id: str | None = None) -> VideoPrediction:
    """The same content as tracks (RLE per frame) + semantic maps holding only stuff."""
    from vidseg.data.formats.common import encode_rle

    tracks = []
    for tid, cls in video.track_categories.items():
        masks = [encode_rle(inst == tid) if (inst == tid).any() else None for inst in video.instance_maps]
        tracks.append(TrackPrediction(track_id=tid, category_id=cls, score=0.5 + 0.1 * tid, masks=masks))
    stuff_maps = []
    for sem in video.semantic_maps:
        s = sem.copy()
        s[s == IGNORE_LABEL] = video.semantic_maps[0][40, 0]
        stuff_maps.append(s)
    return VideoPrediction(
        video_id=video_id or video.video_id, height=video.height, width=video.width, frame_names=frame_names,
        tracks=tracks, semantic_maps=stuff_maps,
    )  # fmt: skip


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when the label maps a and b are equal up to a one-to-one relabelling (0 maps to 0)."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()], axis=1), axis=0)
    if ((pairs[:, 0] == 0) != (pairs[:, 1] == 0)).any():
        return False
    return len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1]))


def cityscapes_videos() -> list[GroundTruthVideo]:
    """Two Cityscapes-vocabulary videos (train ids; things 11..18): v0 with person, car, rider and a car crowd box,
    v1 with car and bus."""
    road, building, sky, person, rider, car, bus = 0, 2, 10, 11, 12, 13, 15
    return [
        make_video("v0", (sky, road), {1: person, 2: car, 3: rider}, crowd_class=car, seed=3),
        make_video("v1", (building, road), {1: car, 4: bus}, seed=4),
    ]
