"""Training-clip samplers: which frames of a video make one clip (TarViS parity, reference/tarvis.md §5).

Every sampler works on the video's *annotated* frames (`VideoRecord.annotations`, sorted by frame): a
clip is made of annotated frames only, and window widths are counted in positions of that list. For a
densely annotated video (YouTube-VIS, OVIS, DAVIS) positions are frame indices; for a sparsely annotated
one (BURST at 1 fps, Cityscapes-VPS every 5th frame) the window is measured in annotated frames, as TarViS
does over its converted annotations.

- `InstanceClipSampler` (VIS/VPS): a reference frame with ≥ 1 track, then `num_frames - 1` further frames
  within ±round(factor·3) positions of it, sorted. `consecutive=True` (Cityscapes-VPS) takes
  `num_frames` consecutive annotated frames containing the reference.
- `VOSClipSampler` (VOS/PET): a reference frame with ≥ 1 object **first**, then frames from the next
  round(factor·3) positions (forward only), sorted after the reference.
- `SemanticClipSampler` (VSS): any annotated frame as reference, then the same symmetric window rule.

When the window holds fewer candidates than needed (a short video, a small factor) the nearest further
frames are used, so a clip is always drawn when the video has enough annotated frames.

GvSeg distant reference (task-oriented temporal contrastive learning, reference/gvseg.md §5): with
`distant_reference=True`, `InstanceClipSampler` first draws the TarViS clip exactly as without it (same
generator calls, so the same seed gives the same clip frames), then one more draw picks a reference frame
uniformly among the annotated positions not in the clip whose gap to the clip's reference position lies in
[reference_min_gap, reference_max_gap] (defaults: just beyond the ±round(factor·3) window, anywhere in the
video); frames with ≥ 1 track are preferred when the sampler requires objects. The returned clip is
`[distant reference, *TarViS clip]`: clip frame 0 is the contrastive reference (what the VIS/VPS contrastive
loss pairs with the other frames), the rest stays sorted. When no position lies in the gap range (a short
video) the farthest free position is used, as the window rule falls back to the nearest frames.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from vidseg.data.records import ClipSamplingError, VideoRecord

__all__ = [
    "ClipSampler",
    "InstanceClipSampler",
    "SemanticClipSampler",
    "VOSClipSampler",
    "window_radius",
]


class ClipSampler(Protocol):
    """Draws the frame indices (into `record.frames`) of one training clip."""

    num_frames: int

    def sample(self, record: VideoRecord, rng: np.random.Generator) -> list[int]: ...


def window_radius(factor: float) -> int:
    """Half-width of the frame window, round(factor · 3) (TarViS FRAME_SAMPLING_MULTIPLICATIVE_FACTOR)."""
    return int(round(factor * 3))


def _check_args(num_frames: int, factor: float) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be ≥ 1, got {num_frames}")
    if factor <= 0:
        raise ValueError(f"factor must be > 0, got {factor}")


def _annotated(record: VideoRecord, num_frames: int) -> list[int]:
    """Annotated frame indices (sorted), with the errors every sampler shares."""
    frames = [a.frame for a in record.annotations]
    if not frames:
        raise ClipSamplingError(f"video {record.video_id!r}: no annotated frame to sample a clip from")
    if num_frames > record.num_frames:
        raise ClipSamplingError(
            f"video {record.video_id!r}: clip of {num_frames} frames is longer than the video "
            f"({record.num_frames} frames)"
        )
    if num_frames > len(frames):
        raise ClipSamplingError(
            f"video {record.video_id!r}: clip of {num_frames} frames needs as many annotated frames, "
            f"the video has {len(frames)}"
        )
    if frames != sorted(set(frames)):
        raise ClipSamplingError(f"video {record.video_id!r}: annotations are not sorted by unique frame")
    if frames[-1] >= record.num_frames or frames[0] < 0:
        raise ClipSamplingError(
            f"video {record.video_id!r}: annotated frame {frames[-1] if frames[0] >= 0 else frames[0]} "
            f"outside the video's {record.num_frames} frames"
        )
    return frames


def _object_positions(record: VideoRecord) -> np.ndarray:
    """Positions (in the annotated-frame list) of frames with ≥ 1 visible track; error if none."""
    positions = np.flatnonzero([len(a.track_ids) > 0 for a in record.annotations])
    if positions.size == 0:
        raise ClipSamplingError(f"video {record.video_id!r}: no annotated frame contains an object")
    return positions


def _draw_around(
    ref: int, num_positions: int, count: int, radius: int, rng: np.random.Generator, forward_only: bool
) -> list[int]:
    """`count` distinct positions other than `ref` within the window; fills from the nearest positions
    outside the window when the window (clipped to the video) is too small."""
    if count == 0:
        return []
    lo = ref + 1 if forward_only else max(0, ref - radius)
    hi = min(num_positions - 1, ref + radius)
    window = np.array([p for p in range(lo, hi + 1) if p != ref], dtype=np.int64)
    if window.size >= count:
        return sorted(int(p) for p in rng.choice(window, size=count, replace=False))
    # Not enough frames in the window: take all of it plus the nearest positions beyond it.
    others = np.array([p for p in range(num_positions) if p != ref and (p > ref or not forward_only)])
    outside = others[(others < lo) | (others > hi)]
    order = np.argsort(np.abs(outside - ref), kind="stable")
    extra = outside[order[: count - window.size]]
    return sorted(int(p) for p in np.concatenate([window, extra]))


class InstanceClipSampler:
    """VIS/VPS clips: reference frame with ≥ 1 track, others within ±round(factor·3), sorted.

    consecutive=True takes `num_frames` consecutive annotated frames that contain the reference frame
    (Cityscapes-VPS). distant_reference=True prepends a GvSeg contrastive reference frame drawn beyond the
    window (module docstring); the clip then has `num_frames + 1` frames. `reference_min_gap` (default
    round(factor·3) + 1) and `reference_max_gap` (default None = anywhere) bound its gap, in annotated
    positions, to the clip's reference frame.
    """

    require_object = True

    def __init__(
        self,
        num_frames: int = 3,
        factor: float = 7.5,
        consecutive: bool = False,
        distant_reference: bool = False,
        reference_min_gap: int | None = None,
        reference_max_gap: int | None = None,
    ) -> None:
        _check_args(num_frames, factor)
        self.num_frames = int(num_frames)
        self.factor = float(factor)
        self.consecutive = bool(consecutive)
        self.distant_reference = bool(distant_reference)
        if reference_min_gap is not None and reference_min_gap < 1:
            raise ValueError(f"reference_min_gap must be ≥ 1 or None, got {reference_min_gap}")
        self.reference_min_gap = None if reference_min_gap is None else int(reference_min_gap)
        self.reference_max_gap = None if reference_max_gap is None else int(reference_max_gap)
        if self.reference_max_gap is not None and self.reference_max_gap < self.min_gap:
            raise ValueError(
                f"reference_max_gap={reference_max_gap} is below the minimum gap {self.min_gap} "
                f"(reference_min_gap={reference_min_gap}, window radius {self.radius})"
            )

    @property
    def radius(self) -> int:
        return window_radius(self.factor)

    def _reference_positions(self, record: VideoRecord) -> np.ndarray:
        if self.require_object:
            return _object_positions(record)
        return np.arange(len(record.annotations))

    @property
    def min_gap(self) -> int:
        """Smallest gap (annotated positions) of a distant reference: default just beyond the window."""
        return self.radius + 1 if self.reference_min_gap is None else self.reference_min_gap

    def sample(self, record: VideoRecord, rng: np.random.Generator) -> list[int]:
        """Frame indices of one clip, sorted ascending (with distant_reference: the reference, then the
        sorted TarViS clip)."""
        frames = _annotated(record, self.num_frames)
        if self.distant_reference and len(frames) < self.num_frames + 1:
            raise ClipSamplingError(
                f"video {record.video_id!r}: a clip of {self.num_frames} frames plus a distant reference needs "
                f"{self.num_frames + 1} annotated frames, the video has {len(frames)}"
            )
        ref = int(rng.choice(self._reference_positions(record)))
        n = len(frames)
        if self.consecutive:
            start_lo = max(0, ref - self.num_frames + 1)
            start_hi = min(ref, n - self.num_frames)
            start = int(rng.integers(start_lo, start_hi + 1))
            positions = list(range(start, start + self.num_frames))
        else:
            others = _draw_around(ref, n, self.num_frames - 1, self.radius, rng, forward_only=False)
            positions = sorted([ref, *others])
        if self.distant_reference:
            positions = [self.draw_reference(record, ref, positions, rng), *positions]
        return [frames[p] for p in positions]

    def draw_reference(
        self, record: VideoRecord, anchor: int, clip_positions: list[int], rng: np.random.Generator
    ) -> int:
        """Position (in the annotated-frame list) of a distant contrastive reference for a clip drawn around
        position `anchor`: uniform over free positions with min_gap ≤ |p − anchor| ≤ max_gap (with ≥ 1 track
        when objects are required and such a free frame exists); the farthest free position if none is in
        range. Raises ClipSamplingError when every annotated frame is already in the clip."""
        n = len(record.annotations)
        positions = np.arange(n)
        free = ~np.isin(positions, clip_positions)
        if not free.any():
            raise ClipSamplingError(
                f"video {record.video_id!r}: no annotated frame left for a distant reference (all {n} are in the clip)"
            )
        if self.require_object:
            with_object = free & np.isin(positions, _object_positions(record))
            pool = with_object if with_object.any() else free
        else:
            pool = free
        gap = np.abs(positions - anchor)
        in_range = pool & (gap >= self.min_gap)
        if self.reference_max_gap is not None:
            in_range &= gap <= self.reference_max_gap
        if in_range.any():
            return int(rng.choice(np.flatnonzero(in_range)))
        farthest = pool & (gap == gap[pool].max())
        return int(rng.choice(np.flatnonzero(farthest)))

    def __repr__(self) -> str:
        extra = ""
        if self.distant_reference:
            extra = f", distant_reference=True, min_gap={self.min_gap}, max_gap={self.reference_max_gap}"
        return (f"{type(self).__name__}(num_frames={self.num_frames}, factor={self.factor}, "
                f"consecutive={self.consecutive}{extra})")


class SemanticClipSampler(InstanceClipSampler):
    """VSS clips: any annotated frame as reference, then the symmetric window rule of InstanceClipSampler."""

    require_object = False


class VOSClipSampler:
    """VOS/PET clips: reference frame (≥ 1 visible object) first, then frames from the next round(factor·3)
    annotated frames, forward only. The reference is always the clip's first frame (its masks are the
    prompts)."""

    def __init__(self, num_frames: int = 3, factor: float = 7.5) -> None:
        _check_args(num_frames, factor)
        self.num_frames = int(num_frames)
        self.factor = float(factor)

    @property
    def radius(self) -> int:
        return window_radius(self.factor)

    def sample(self, record: VideoRecord, rng: np.random.Generator) -> list[int]:
        """Frame indices of one clip: the reference first, then later frames ascending."""
        frames = _annotated(record, self.num_frames)
        n = len(frames)
        positions = _object_positions(record)
        # The reference needs num_frames - 1 annotated frames after it.
        usable = positions[positions <= n - self.num_frames]
        if usable.size == 0:
            raise ClipSamplingError(
                f"video {record.video_id!r}: no frame with a visible object has {self.num_frames - 1} "
                f"annotated frames after it (first object at frame {frames[int(positions[0])]}, "
                f"{n} annotated frames)"
            )
        ref = int(rng.choice(usable))
        others = _draw_around(ref, n, self.num_frames - 1, self.radius, rng, forward_only=True)
        return [frames[ref], *(frames[p] for p in others)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_frames={self.num_frames}, factor={self.factor})"
