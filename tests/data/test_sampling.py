"""Clip samplers: window rules, reference-frame rules, determinism and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vidseg.data.records import ClipSamplingError, FrameAnnotation, FrameSource, VideoRecord
from vidseg.data.sampling import InstanceClipSampler, SemanticClipSampler, VOSClipSampler, window_radius

SEEDS = range(300)


def make_video(num_frames: int, object_frames: set[int], annotated: list[int] | None = None,
               video_id: str = "vid") -> VideoRecord:
    """A video whose annotated frames are `annotated` (default: all); a track is visible on `object_frames`."""
    annotated = list(range(num_frames)) if annotated is None else annotated
    names = [f"{i:05d}" for i in range(num_frames)]
    frames = FrameSource(kind="images", paths=[Path(f"/nowhere/{n}.jpg") for n in names], names=names)
    anns = [FrameAnnotation(frame=f, track_ids=frozenset({1}) if f in object_frames else frozenset())
            for f in annotated]
    return VideoRecord(video_id=video_id, frames=frames, height=8, width=8, annotations=anns)


def draws(sampler, video, seeds=SEEDS) -> list[list[int]]:
    return [sampler.sample(video, np.random.default_rng(s)) for s in seeds]


def test_window_radius_is_round_factor_times_three():
    assert window_radius(7.5) == 22  # round(22.5) -> 22 (banker's rounding, as Python's round)
    assert window_radius(2.0) == 6
    assert window_radius(5.0) == 15
    assert window_radius(3.0) == 9


def test_instance_sampler_reference_has_object_and_window_is_symmetric():
    video = make_video(50, object_frames={20})
    sampler = InstanceClipSampler(num_frames=3, factor=2.0)  # radius 6
    clips = draws(sampler, video)
    for clip in clips:
        assert len(clip) == 3 and len(set(clip)) == 3
        assert clip == sorted(clip)
        assert 20 in clip  # the only frame with an object is always the reference
        assert all(abs(f - 20) <= 6 for f in clip)
    offsets = {f - 20 for clip in clips for f in clip}
    assert offsets == set(range(-6, 7))  # every frame of the window is reachable, nothing beyond


def test_instance_sampler_window_clipped_to_video():
    video = make_video(30, object_frames={0})
    clips = draws(InstanceClipSampler(num_frames=3, factor=2.0), video)
    assert {f for clip in clips for f in clip} == set(range(7))
    assert all(clip[0] == 0 for clip in clips)


def test_instance_sampler_sparse_annotation_counts_annotated_frames():
    annotated = list(range(0, 50, 5))  # 1 annotation every 5 frames (BURST-like)
    video = make_video(50, object_frames={25}, annotated=annotated)
    clips = draws(InstanceClipSampler(num_frames=3, factor=1.0), video)  # radius 3 annotated frames
    used = {f for clip in clips for f in clip}
    assert used == {10, 15, 20, 25, 30, 35, 40}
    assert all(25 in clip for clip in clips)


def test_instance_sampler_consecutive_takes_neighbouring_annotated_frames():
    annotated = list(range(0, 60, 5))
    video = make_video(60, object_frames={30}, annotated=annotated)
    clips = draws(InstanceClipSampler(num_frames=3, factor=7.5, consecutive=True), video)
    starts = set()
    for clip in clips:
        assert 30 in clip
        assert [b - a for a, b in zip(clip, clip[1:])] == [5, 5]
        starts.add(clip[0])
    assert starts == {20, 25, 30}


def test_instance_sampler_fills_from_nearest_frames_when_window_is_small():
    video = make_video(20, object_frames={10})
    sampler = InstanceClipSampler(num_frames=5, factor=0.3)  # radius 1: window has only 2 other frames
    for clip in draws(sampler, video, range(20)):
        assert len(set(clip)) == 5
        assert clip[:2] == [8, 9] or clip[-2:] == [11, 12]  # nearest beyond the window
        assert {9, 10, 11} <= set(clip)


def test_vos_sampler_reference_first_then_forward_window():
    video = make_video(60, object_frames={10})
    sampler = VOSClipSampler(num_frames=3, factor=2.0)  # next 6 frames
    clips = draws(sampler, video)
    for clip in clips:
        assert clip[0] == 10
        assert clip[1:] == sorted(clip[1:])
        assert all(11 <= f <= 16 for f in clip[1:])
    assert {f for clip in clips for f in clip[1:]} == set(range(11, 17))


def test_vos_sampler_reference_needs_frames_after_it():
    video = make_video(50, object_frames={10, 49})  # frame 49 has no 2 frames after it
    clips = draws(VOSClipSampler(num_frames=3, factor=7.5), video)
    assert all(clip[0] == 10 for clip in clips)
    near_end = make_video(50, object_frames={48, 49}, video_id="late")
    with pytest.raises(ClipSamplingError, match="late"):
        VOSClipSampler(num_frames=3).sample(near_end, np.random.default_rng(0))


def test_semantic_sampler_accepts_frames_without_objects():
    video = make_video(40, object_frames=set())
    clips = draws(SemanticClipSampler(num_frames=3, factor=2.0), video, range(50))
    assert all(len(set(c)) == 3 and c == sorted(c) and c[-1] - c[0] <= 12 for c in clips)
    assert len({f for c in clips for f in c}) > 20  # references spread over the whole video
    with pytest.raises(ClipSamplingError, match="no annotated frame contains an object"):
        InstanceClipSampler().sample(video, np.random.default_rng(0))


@pytest.mark.parametrize("sampler", [InstanceClipSampler(), VOSClipSampler(), SemanticClipSampler(),
                                     InstanceClipSampler(consecutive=True)])
def test_samplers_are_deterministic_for_a_seed(sampler):
    video = make_video(80, object_frames=set(range(0, 80, 3)))
    assert draws(sampler, video, range(20)) == draws(sampler, video, range(20))
    assert len({tuple(c) for c in draws(sampler, video, range(20))}) > 5


@pytest.mark.parametrize("sampler", [InstanceClipSampler(), VOSClipSampler(), SemanticClipSampler()])
def test_errors_name_the_video(sampler):
    short = make_video(2, object_frames={0, 1}, video_id="short_vid")
    with pytest.raises(ClipSamplingError, match="short_vid.*longer than the video"):
        sampler.sample(short, np.random.default_rng(0))
    unannotated = make_video(10, object_frames=set(), annotated=[], video_id="bare_vid")
    with pytest.raises(ClipSamplingError, match="bare_vid.*no annotated frame"):
        sampler.sample(unannotated, np.random.default_rng(0))
    sparse = make_video(10, object_frames={0, 5}, annotated=[0, 5], video_id="sparse_vid")
    with pytest.raises(ClipSamplingError, match="sparse_vid.*annotated frames"):
        sampler.sample(sparse, np.random.default_rng(0))


def test_invalid_arguments():
    with pytest.raises(ValueError):
        InstanceClipSampler(num_frames=0)
    with pytest.raises(ValueError):
        VOSClipSampler(factor=0)
