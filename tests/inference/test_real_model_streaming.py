"""The tiny network (random init, built from the repo's configs) over a 60-frame synthetic video: streamed
clips give per-frame outputs for every frame, and a clip as long as the video equals the unstreamed run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.inference._tiny import build_tiny, moving_disc_frames

from vidseg.data.records import FrameAnnotation, FrameSource, Prompt, VideoRecord
from vidseg.inference.resize import masks_to_rles
from vidseg.inference.stream import TensorFrames

pytestmark = pytest.mark.slow
N, H, W = 60, 64, 64


def _video() -> tuple[TensorFrames, VideoRecord]:
    frames = torch.from_numpy(moving_disc_frames(N, H, W, radius=10, speed=0.5)).permute(0, 3, 1, 2).contiguous()
    record = VideoRecord("disc", FrameSource("images", names=[f"{t:05d}" for t in range(N)]), H, W)
    return TensorFrames(frames, (H, W), (H, W)), record


@pytest.mark.parametrize("task_name", ["vis", "vos"])
def test_streamed_tiny_model(task_name: str, tmp_path: Path, vidseg_cache: Path) -> None:
    _, module, dm = build_tiny(task_name, vidseg_cache, tmp_path)
    task, model = module.tasks[task_name], module.model
    dataset = next(iter(dm.specs))
    frames, record = _video()
    if task_name == "vos":
        disc = (frames.frames[0, 0] > 200)  # the disc on frame 0
        rle = masks_to_rles(disc[None])[0]
        record.annotations.append(FrameAnnotation(0, rles={1: rle}, track_ids=frozenset({1})))
        record.prompts.append(Prompt(1, 0))
    runs = {}
    for clip_len, overlap in [(None, 0), (N, 0), (12, 6)]:
        task.clip_len, task.clip_overlap = clip_len, overlap
        torch.manual_seed(0)
        runs[clip_len] = task.predict_video(model, frames, record, dataset)
    whole, same_len, streamed = runs[None], runs[N], runs[12]
    assert [t.masks for t in whole.tracks] == [t.masks for t in same_len.tracks]
    assert [t.score for t in whole.tracks] == [t.score for t in same_len.tracks]
    assert streamed.frame_names == record.frames.names
    assert all(len(t.masks) == N for t in streamed.tracks) and streamed.tracks
    if task_name == "vos":
        assert streamed.tracks[0].masks[0] == rle  # the prompt wins on its frame
    else:
        assert len(streamed.tracks) <= task.top_k
