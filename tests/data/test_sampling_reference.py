"""GvSeg distant contrastive reference of the instance clip sampler: off = the TarViS sampling unchanged; on =
the same TarViS clip plus a reference frame beyond the window, drawn with the configured distribution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vidseg.data.records import ClipSamplingError, FrameAnnotation, FrameSource, VideoRecord
from vidseg.data.sampling import InstanceClipSampler, SemanticClipSampler


def make_video(num_frames: int, object_frames: set[int], annotated: list[int] | None = None) -> VideoRecord:
    """A video whose annotated frames are `annotated` (default: all); a track is visible on `object_frames`."""
    annotated = list(range(num_frames)) if annotated is None else annotated
    names = [f"{i:05d}" for i in range(num_frames)]
    frames = FrameSource(kind="images", paths=[Path(f"/nowhere/{n}.jpg") for n in names], names=names)
    anns = [FrameAnnotation(frame=f, track_ids=frozenset({1}) if f in object_frames else frozenset())
            for f in annotated]
    return VideoRecord(video_id="vid", frames=frames, height=8, width=8, annotations=anns)


# Recorded with the samplers of commit 5689914 (before distant references existed) on
# make_video(40, object_frames=set(range(5, 35, 3))), seeds 0..5: switch-off sampling must not change.
GOLDEN = {
    "inst": [[29, 30, 31], [16, 17, 21], [24, 25, 29], [23, 25, 29], [26, 31, 32], [17, 23, 26]],
    "cons": [[28, 29, 30], [16, 17, 18], [27, 28, 29], [27, 28, 29], [26, 27, 28], [23, 24, 25]],
    "sem": [[32, 33, 34, 36], [17, 18, 19, 21], [30, 31, 33, 36], [29, 30, 32, 34], [29, 30, 31, 32],
            [23, 26, 27, 28]],
}
SAMPLERS = {
    "inst": dict(cls=InstanceClipSampler, num_frames=3, factor=2.0),
    "cons": dict(cls=InstanceClipSampler, num_frames=3, factor=2.0, consecutive=True),
    "sem": dict(cls=SemanticClipSampler, num_frames=4, factor=1.0),
}


def build(name: str, **extra) -> InstanceClipSampler:
    kwargs = dict(SAMPLERS[name])
    cls = kwargs.pop("cls")
    return cls(**kwargs, **extra)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_switch_off_is_bit_identical_to_the_previous_sampler(name: str) -> None:
    video = make_video(40, object_frames=set(range(5, 35, 3)))
    for sampler in (build(name), build(name, distant_reference=False, reference_max_gap=30)):
        got = [sampler.sample(video, np.random.default_rng(s)) for s in range(6)]
        assert got == GOLDEN[name]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_switch_on_keeps_the_tarvis_clip_and_prepends_the_reference(name: str) -> None:
    video = make_video(40, object_frames=set(range(5, 35, 3)))
    sampler = build(name, distant_reference=True)
    for seed in range(6):
        clip = sampler.sample(video, np.random.default_rng(seed))
        assert len(clip) == sampler.num_frames + 1
        assert clip[1:] == GOLDEN[name][seed]  # the TarViS frames are drawn first, with the same calls
        assert clip[0] not in clip[1:]


def test_reference_gap_exceeds_the_window_and_is_uniform() -> None:
    # One frame with an object fixes the clip's reference at 30; every other frame is free of objects, so the
    # pool is every free frame and the distribution can be checked exactly.
    video = make_video(60, object_frames={30})
    sampler = InstanceClipSampler(num_frames=3, factor=2.0, distant_reference=True)  # radius 6
    counts: dict[int, int] = {}
    for seed in range(4700):
        clip = sampler.sample(video, np.random.default_rng(seed))
        assert 30 in clip[1:] and all(abs(f - 30) <= 6 for f in clip[1:])
        counts[clip[0]] = counts.get(clip[0], 0) + 1
    allowed = {p for p in range(60) if abs(p - 30) > 6}
    assert set(counts) == allowed  # all of the video beyond the window, nothing inside it
    expected = 4700 / len(allowed)  # 100 per position
    assert all(abs(c - expected) < 0.4 * expected for c in counts.values()), counts
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 80  # 46 degrees of freedom: p(chi2 > 80) ≈ 0.0015 under uniformity


def test_reference_gap_range_is_configurable() -> None:
    video = make_video(60, object_frames={30})
    sampler = InstanceClipSampler(num_frames=3, factor=2.0, distant_reference=True, reference_min_gap=10,
                                  reference_max_gap=12)
    seen = {sampler.sample(video, np.random.default_rng(s))[0] for s in range(400)}
    assert seen == {18, 19, 20, 40, 41, 42}


def test_reference_prefers_frames_with_objects() -> None:
    video = make_video(60, object_frames={30, 3, 55})
    sampler = InstanceClipSampler(num_frames=3, factor=2.0, distant_reference=True)
    refs = set()
    for s in range(300):
        clip = sampler.sample(video, np.random.default_rng(s))
        refs.add(clip[0])
        assert clip[0] in {3, 30, 55} and clip[0] not in clip[1:]
    assert refs == {3, 30, 55}  # the clip's reference may be 3 or 55 too, then 30 is a distant one


def test_draw_reference_gap_measured_from_the_anchor_in_annotated_positions() -> None:
    annotated = list(range(0, 100, 5))  # 20 annotated positions, 5 frames apart
    video = make_video(100, object_frames=set(annotated), annotated=annotated)
    sampler = InstanceClipSampler(num_frames=2, factor=1.0, distant_reference=True, reference_max_gap=4)
    draws = {sampler.draw_reference(video, 10, [10, 11], np.random.default_rng(s)) for s in range(300)}
    assert draws == {6, 14}  # radius 3: gap 4 only, positions (not frame numbers)
    clips = [sampler.sample(video, np.random.default_rng(s)) for s in range(50)]
    assert all(f % 5 == 0 for c in clips for f in c)


def test_short_video_falls_back_to_the_farthest_free_frame() -> None:
    video = make_video(6, object_frames=set(range(6)))
    sampler = InstanceClipSampler(num_frames=3, factor=2.0, distant_reference=True)  # radius 6 > video
    for s in range(50):
        clip = sampler.sample(video, np.random.default_rng(s))
        anchor_candidates = clip[1:]
        free = [p for p in range(6) if p not in clip[1:]]
        # the reference is the farthest free frame from one of the clip frames (the clip's reference)
        assert clip[0] in free
        assert any(abs(clip[0] - a) == max(abs(p - a) for p in free) for a in anchor_candidates)


def test_errors() -> None:
    video = make_video(3, object_frames={1})
    with pytest.raises(ClipSamplingError, match="plus a distant reference needs 4 annotated frames"):
        InstanceClipSampler(num_frames=3, factor=2.0, distant_reference=True).sample(video, np.random.default_rng(0))
    assert InstanceClipSampler(num_frames=3, factor=2.0).sample(video, np.random.default_rng(0)) == [0, 1, 2]
    with pytest.raises(ValueError, match="reference_min_gap"):
        InstanceClipSampler(distant_reference=True, reference_min_gap=0)
    with pytest.raises(ValueError, match="below the minimum gap 7"):
        InstanceClipSampler(factor=2.0, distant_reference=True, reference_max_gap=5)
    with pytest.raises(ClipSamplingError, match="no annotated frame left"):
        InstanceClipSampler(num_frames=3, factor=2.0).draw_reference(video, 1, [0, 1, 2], np.random.default_rng(0))
