"""Batching clips: `stack_for_handover` equals `torch.stack`, keeps the HWC layout of decoded frames, allocates in
shared memory inside DataLoader workers; `collate_clips` makes each sample's frames a view of the batch's, and a
2-worker DataLoader hands over exactly what the in-process collate builds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import vidseg.data.collate as collate_mod
from vidseg.data.collate import collate_clips, stack_for_handover
from vidseg.data.records import PAD_VALUE, ClipSample


def hwc_frames(t: int, h: int, w: int, seed: int) -> torch.Tensor:
    """uint8 [T, 3, H, W] over HWC memory, as decoded frames are."""
    g = np.random.default_rng(seed)
    return torch.from_numpy(g.integers(0, 256, (t, h, w, 3), dtype=np.uint8)).permute(0, 3, 1, 2)


def sample(seed: int, h: int = 24, w: int = 32, n: int = 2) -> ClipSample:
    g = torch.Generator().manual_seed(seed)
    return ClipSample(frames=hwc_frames(3, h, w, seed), masks=torch.rand(n, 3, h, w, generator=g) > 0.5,
                      track_ids=torch.arange(1, n + 1), class_ids=torch.zeros(n, dtype=torch.int64),
                      pad_mask=torch.ones(h, w, dtype=torch.bool), dataset="d", video_id=f"v{seed}")


@pytest.fixture
def in_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collate_mod, "get_worker_info", lambda: object())


@pytest.mark.parametrize("worker", [False, True])
def test_stack_equals_torch_stack_and_keeps_a_dense_layout(worker: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if worker:
        monkeypatch.setattr(collate_mod, "get_worker_info", lambda: object())
    frames = [hwc_frames(3, 8, 10, s) for s in range(3)]
    out = stack_for_handover(frames)
    assert torch.equal(out, torch.stack(frames))
    assert out.stride() == (frames[0].numel(), *frames[0].stride())  # HWC memory kept: a plain copy per clip
    assert out.is_shared() == worker
    plain = [torch.arange(12).view(3, 4) + k for k in range(2)]
    assert torch.equal(stack_for_handover(plain), torch.stack(plain))


def test_mixed_layouts_and_views_fall_back_to_a_contiguous_stack(in_worker: None) -> None:
    a = hwc_frames(2, 6, 6, 0)
    b = a.contiguous() + 1  # same shape, other strides
    c = torch.arange(200, dtype=torch.uint8)[:72].view(2, 3, 6, 2)  # not covering its storage
    for group in ([a, b], [c, c]):
        out = stack_for_handover(group)
        assert torch.equal(out, torch.stack(group)) and out.is_contiguous() and out.is_shared()


def test_collate_samples_view_the_batch_frames() -> None:
    batch = collate_clips([sample(0), sample(1, h=16)], "vos")
    for i, s in enumerate(batch.samples):
        assert s.frames.data_ptr() == batch.frames[i].data_ptr()
        assert s.pad_mask.data_ptr() == batch.pad_mask[i].data_ptr()
    assert torch.equal(batch.frames[0], sample(0).frames)
    assert torch.equal(batch.frames[1, :, :, :16], sample(1, h=16).frames)
    assert (batch.frames[1, :, :, 16:] == PAD_VALUE).all() and not batch.pad_mask[1, 16:].any()


class _Clips(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> ClipSample:
        return sample(i, h=24 if i % 2 else 20)


def test_two_worker_loader_hands_over_the_in_process_batches() -> None:
    data = _Clips()
    loader = DataLoader(data, batch_size=2, num_workers=2, collate_fn=lambda s: collate_clips(s, "vos"))
    for k, got in enumerate(loader):
        want = collate_clips([data[2 * k], data[2 * k + 1]], "vos")
        assert torch.equal(got.frames, want.frames) and torch.equal(got.pad_mask, want.pad_mask)
        for g, w in zip(got.samples, want.samples, strict=True):
            assert torch.equal(g.frames, w.frames) and torch.equal(g.masks, w.masks) and g.video_id == w.video_id
    assert k == 2


def test_crops_of_different_sizes_are_padded_while_stacked(in_worker: None) -> None:
    hwc = torch.arange(3 * 20 * 30 * 3, dtype=torch.int32).to(torch.uint8).view(3, 20, 30, 3)
    crops = [hwc.permute(0, 3, 1, 2)[:, :, 2:12, 5:25], hwc.permute(0, 3, 1, 2)[:, :, 0:7, 0:20]]  # two sizes
    out = stack_for_handover(crops, pad_to=(12, 24), fill=PAD_VALUE)
    assert out.shape == (2, 3, 3, 12, 24) and out.is_shared()
    assert out.stride() == (3 * 12 * 24 * 3, 12 * 24 * 3, 1, 24 * 3, 3)  # channels-last, one copy per crop
    for k, c in enumerate(crops):
        h, w = c.shape[-2:]
        assert torch.equal(out[k, :, :, :h, :w], c)
        assert (out[k, :, :, h:] == PAD_VALUE).all() and (out[k, :, :, :, w:] == PAD_VALUE).all()
