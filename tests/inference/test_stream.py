"""Clip streaming: the plan of clip starts, frames decoded once and released, the same pixels as the
validation loader."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Sequence

import pytest
import torch

from vidseg.data.records import ClipSamplingError, CorruptMediaError
from vidseg.inference.stream import DecodedFrames, TensorFrames, clip_starts, resized_hw, stream_clips


class CountingFrames:
    """VideoFrames whose frame t is filled with the value t; records every decoded index and the tensors
    it handed out (weakly) so the test can see what is still alive."""

    def __init__(self, n: int, hw: tuple[int, int] = (8, 8)) -> None:
        self.num_frames, self.valid_hw, self.padded_hw, self.orig_hw = n, hw, hw, hw
        self.decoded: list[int] = []
        self.handed: list[weakref.ref] = []

    def read(self, indices: Sequence[int]) -> torch.Tensor:
        self.decoded.extend(indices)
        x = torch.stack([torch.full((3, *self.padded_hw), i, dtype=torch.uint8) for i in indices])
        self.handed.append(weakref.ref(x))
        return x


@pytest.mark.parametrize(
    ("n", "length", "overlap", "first", "expected"),
    [
        (60, 12, 6, 0, [0, 6, 12, 18, 24, 30, 36, 42, 48]),
        (20, 12, 6, 0, [0, 6, 8]),
        (12, 12, 6, 0, [0]),
        (5, 12, 6, 0, [0]),
        (60, None, 0, 0, [0]),
        (10, 4, 3, 0, [0, 1, 2, 3, 4, 5, 6]),
        (30, 12, 6, 10, [10, 16, 18]),
        (13, 12, 0, 0, [0, 1]),
    ],
)
def test_clip_starts(n: int, length: int | None, overlap: int, first: int, expected: list[int]) -> None:
    starts = clip_starts(n, length, overlap, first)
    assert starts == expected
    covered = set().union(*(range(s, min(s + (length or n), n)) for s in starts))
    assert covered == set(range(first, n))


@pytest.mark.parametrize(("length", "overlap"), [(12, 12), (12, -1), (0, 0), (4, 7)])
def test_clip_starts_rejects_bad_arguments(length: int, overlap: int) -> None:
    with pytest.raises(ClipSamplingError, match="clip_"):
        clip_starts(30, length, overlap)


@pytest.mark.parametrize(("length", "overlap"), [(12, 6), (12, 11), (7, 0), (5, 4)])
def test_stream_decodes_each_frame_once_and_releases_old_clips(length: int, overlap: int) -> None:
    frames = CountingFrames(60)
    starts = clip_starts(60, length, overlap)
    seen = []
    for clip in stream_clips(frames, length, overlap):
        assert clip.start == starts[clip.index]
        assert clip.frames.shape[0] == length
        # frame t holds value t: the clip is exactly frames [start, end)
        assert clip.frames[:, 0, 0, 0].tolist() == list(range(clip.start, clip.end))
        prev_end = seen[-1][1] if seen else clip.start
        assert clip.overlap == max(0, prev_end - clip.start)
        assert clip.next_start == (starts[clip.index + 1] if clip.index + 1 < len(starts) else 60)
        seen.append((clip.start, clip.end))
        gc.collect()
        alive = sum(r() is not None for r in frames.handed)
        assert alive <= 2, "decoded frames of clips before the previous one are still referenced"
    assert sorted(frames.decoded) == list(range(60))  # every frame decoded exactly once


def test_tensor_frames_slices_without_copy() -> None:
    x = torch.arange(5, dtype=torch.uint8)[:, None, None, None].expand(5, 3, 4, 4).contiguous()
    tf = TensorFrames(x, (4, 3), (8, 6))
    assert tf.read([1, 2, 3]).data_ptr() == x[1].data_ptr()
    assert tf.read([4, 0])[:, 0, 0, 0].tolist() == [4, 0]
    assert (tf.num_frames, tf.valid_hw, tf.padded_hw, tf.orig_hw) == (5, (4, 3), (4, 4), (8, 6))


@pytest.mark.slow  # generates the synthetic DAVIS data (~1 min on a loaded CPU)
def test_decoded_frames_equal_the_validation_loader(vidseg_cache) -> None:
    from vidseg.data.datamodule import EvalVideoDataset
    from vidseg.data.formats import get_format
    from vidseg.data.synthetic import ensure_synthetic

    record = get_format("davis").read(ensure_synthetic("davis", vidseg_cache / "synthetic"), "val")
    ev = EvalVideoDataset("d", record, 48, 80, max_videos=1)[0]
    frames = DecodedFrames(record.videos[0], 48, 80)
    assert frames.valid_hw == ev.valid_hw and frames.padded_hw == tuple(ev.frames.shape[-2:])
    clips = list(stream_clips(frames, 5, 2))
    for clip in clips:
        assert torch.equal(clip.frames, ev.frames[clip.start : clip.end])
    assert resized_hw((480, 854), 480, 1333) == (480, 854)
    assert resized_hw((100, 4000), 50, 1000) == (25, 1000)


def test_decoded_frames_errors_name_the_file(tmp_path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(CorruptMediaError, match="broken.mp4"):
        DecodedFrames(bad, 64, 64).read([0])
