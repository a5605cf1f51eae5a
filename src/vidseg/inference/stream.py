"""Long videos as a stream of overlapping clips: frames are decoded when a clip first needs them, kept only
while a later clip still shares them, then released — peak memory is bounded by one clip, not the video.

A `VideoFrames` is the model-side view of one video: `read(indices)` gives uint8 [t, 3, Hp, Wp] frames
resized (short side) and padded exactly like the validation loader's `EvalVideo`. Two sources exist:
`TensorFrames` (an already decoded `EvalVideo`) and `DecodedFrames` (a video file / frame folder, decoded
through `vidseg.data.video.open_frames` on demand). `stream_clips` turns one into `Clip`s of length L with
overlap O (TarViS §9); `clip_starts` is the plan.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from vidseg.data.records import ClipSamplingError, CorruptMediaError, FrameSource, VideoRecord

PAD_MULTIPLE = 64


@runtime_checkable
class VideoFrames(Protocol):
    """Model-ready frames of one video (resized and padded); only the requested frames are decoded."""

    num_frames: int
    valid_hw: tuple[int, int]  # size after resizing, before padding
    padded_hw: tuple[int, int]
    orig_hw: tuple[int, int]

    def read(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 [t, 3, Hp, Wp] for `indices` (in that order)."""
        ...


def resized_hw(orig_hw: tuple[int, int], short: int, max_dim: int) -> tuple[int, int]:
    """Size after scaling the short side to `short` with the long side ≤ `max_dim` (the datamodule's rule)."""
    h, w = orig_hw
    scale = min(short / min(h, w), max_dim / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def padded_size(hw: tuple[int, int], multiple: int = PAD_MULTIPLE) -> tuple[int, int]:
    return hw[0] + (-hw[0] % multiple), hw[1] + (-hw[1] % multiple)


class TensorFrames:
    """An already decoded `EvalVideo` (uint8 [T, 3, Hp, Wp]) seen as `VideoFrames` (slices, no copy)."""

    def __init__(self, frames: torch.Tensor, valid_hw: tuple[int, int], orig_hw: tuple[int, int]) -> None:
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"TensorFrames: expected uint8 [T, 3, H, W], got {tuple(frames.shape)}")
        self.frames = frames
        self.num_frames = int(frames.shape[0])
        self.valid_hw = (int(valid_hw[0]), int(valid_hw[1]))
        self.padded_hw = (int(frames.shape[-2]), int(frames.shape[-1]))
        self.orig_hw = (int(orig_hw[0]), int(orig_hw[1]))

    def read(self, indices: Sequence[int]) -> torch.Tensor:
        idx = list(indices)
        if idx and idx == list(range(idx[0], idx[-1] + 1)):
            return self.frames[idx[0] : idx[-1] + 1]
        return self.frames[torch.as_tensor(idx, dtype=torch.long)]


class DecodedFrames:
    """Frames of a video file or frame folder, decoded on demand and resized/padded like `EvalVideo`.

    progress: called with the number of frames decoded by each `read` (a progress bar's `update`)."""

    def __init__(
        self,
        source: FrameSource | VideoRecord | Path | str,
        short: int,
        max_dim: int,
        backend: str = "auto",
        progress: Callable[[int], Any] | None = None,
    ) -> None:
        from vidseg.data.video import open_frames, source_from_path

        if isinstance(source, VideoRecord):
            frame_source, orig = source.frames, (source.height, source.width)
        else:
            frame_source = source if isinstance(source, FrameSource) else source_from_path(Path(source))
            orig = None
        self.where = str(frame_source.video_path or (frame_source.paths[0].parent if frame_source.paths else "?"))
        self.num_frames = len(frame_source)
        if self.num_frames == 0:
            raise CorruptMediaError(f"{self.where}: video has no frames")
        self.reader = open_frames(frame_source, backend=backend)
        if orig is None:
            orig = tuple(self.reader.read([0]).shape[1:3])
        self.orig_hw = (int(orig[0]), int(orig[1]))
        self.short, self.max_dim = short, max_dim
        self.valid_hw = resized_hw(self.orig_hw, short, max_dim)
        self.padded_hw = padded_size(self.valid_hw)
        self.progress = progress

    def read(self, indices: Sequence[int]) -> torch.Tensor:
        from vidseg.data.datamodule import resize_pad_frames

        raw = self.reader.read(list(indices))
        if raw.shape[1:3] != self.orig_hw:
            raise CorruptMediaError(
                f"{self.where}: frame {indices[0]} is {raw.shape[1]}x{raw.shape[2]}, expected "
                f"{self.orig_hw[0]}x{self.orig_hw[1]}"
            )
        x, valid = resize_pad_frames(raw, self.short, self.max_dim, PAD_MULTIPLE)
        if tuple(valid) != self.valid_hw:  # both use the same rule; a mismatch is a bug, not bad input
            raise AssertionError(f"resize rule mismatch: {valid} != {self.valid_hw}")
        if self.progress is not None:
            self.progress(len(indices))
        return x

    def close(self) -> None:
        self.reader.close()


def as_video_frames(video: Any) -> VideoFrames:
    """`VideoFrames` for an `EvalVideo` (duck-typed: frames/valid_hw/orig_hw) or a `VideoFrames`."""
    if isinstance(video, VideoFrames):
        return video
    if hasattr(video, "frames") and hasattr(video, "valid_hw") and hasattr(video, "orig_hw"):
        return TensorFrames(video.frames, video.valid_hw, video.orig_hw)
    raise TypeError(f"cannot stream frames from {type(video).__name__}: need an EvalVideo or VideoFrames")


def check_clip_args(clip_len: int | None, overlap: int) -> None:
    if clip_len is not None and clip_len < 1:
        raise ClipSamplingError(f"clip_len must be ≥ 1 (or null for one clip), got {clip_len}")
    if overlap < 0 or (clip_len is not None and overlap >= clip_len):
        raise ClipSamplingError(f"clip_overlap must be in [0, clip_len), got {overlap} with clip_len {clip_len}")


def clip_starts(num_frames: int, clip_len: int | None, overlap: int, first: int = 0) -> list[int]:
    """Start frames of the clips covering [first, num_frames): stride L−O; the last clip ends at the video's
    end (it may overlap its predecessor by more than O). A span no longer than L (or L = None) is one clip."""
    check_clip_args(clip_len, overlap)
    if not 0 <= first < max(num_frames, 1):
        raise ClipSamplingError(f"first clip frame {first} outside a video of {num_frames} frames")
    if clip_len is None or num_frames - first <= clip_len:
        return [first]
    starts = list(range(first, num_frames - clip_len + 1, clip_len - overlap))
    if starts[-1] + clip_len < num_frames:
        starts.append(num_frames - clip_len)
    return starts


@dataclass
class Clip:
    """One clip of the stream: frames [start, start + len) and how many leading frames the previous clip
    shared (`overlap`); `next_start` is where the following clip begins (frames before it are finished)."""

    index: int
    start: int
    frames: torch.Tensor  # uint8 [t, 3, Hp, Wp]
    overlap: int
    next_start: int  # num_frames for the last clip

    @property
    def end(self) -> int:
        return self.start + int(self.frames.shape[0])

    @property
    def is_last(self) -> bool:
        return self.next_start >= self.end


def stream_clips(
    frames: VideoFrames, clip_len: int | None, overlap: int, first: int = 0, starts: Sequence[int] | None = None
) -> Iterator[Clip]:
    """Yield the clips of `clip_starts(...)` (or the given `starts`); frames shared with the previous clip
    are reused, only new frames are decoded; nothing older than the current clip is kept."""
    n = frames.num_frames
    plan = list(starts) if starts is not None else clip_starts(n, clip_len, overlap, first)
    length = n - plan[0] if clip_len is None else clip_len
    prev: torch.Tensor | None = None
    prev_start = prev_end = -1
    for i, start in enumerate(plan):
        end = min(start + length, n)
        if i and start < prev_start:
            raise ClipSamplingError(f"clip starts must increase, got {plan}")
        shared = max(0, min(prev_end, end) - start) if prev is not None else 0
        new_idx = list(range(start + shared, end))
        if shared:
            kept = prev[start - prev_start : start - prev_start + shared]
            x = torch.cat([kept, frames.read(new_idx)]) if new_idx else kept.clone()
        else:
            x = frames.read(new_idx)
        prev = None  # release the previous clip before the consumer runs the model on this one
        nxt = plan[i + 1] if i + 1 < len(plan) else n
        yield Clip(i, start, x, shared, nxt)
        prev, prev_start, prev_end = x, start, end

