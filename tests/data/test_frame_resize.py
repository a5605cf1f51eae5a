"""Resize on the device: crops handed over as decoded, flipped/resized/padded by `Batch.to`, give the same batches
as the transform resizing them in the worker."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vidseg.data.clip_dataset import ClipDataset
from vidseg.data.collate import collate_clips, stack_for_handover
from vidseg.data.formats import get_format
from vidseg.data.frame_resize import finish_frames, resize_frames
from vidseg.data.records import PAD_VALUE, ClipSamplingError
from vidseg.data.sampling import InstanceClipSampler, VOSClipSampler
from vidseg.data.synthetic import ensure_synthetic
from vidseg.data.transforms import ClipTransform


def clip(seed: int, t: int = 3, h: int = 45, w: int = 70) -> tuple[torch.Tensor, torch.Tensor]:
    g = np.random.default_rng(seed)
    frames = torch.from_numpy(g.integers(0, 256, (t, h, w, 3), np.uint8)).permute(0, 3, 1, 2)
    masks = torch.zeros((3, t, h, w), dtype=torch.bool)
    for n in range(3):
        y, x = int(g.integers(0, h - 12)), int(g.integers(0, w - 12))
        masks[n, :, y : y + 12, x : x + 12] = True
    return frames, masks


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("colour_on_device", [True, False])
@pytest.mark.parametrize("scale_from", ["crop", "image"])
def test_device_resize_equals_the_workers_resize(seed: int, colour_on_device: bool, scale_from: str) -> None:
    frames, masks = clip(seed)
    kw = dict(min_dims=(40, 64, 96), max_dim=200, crop_fraction=(0.6, 0.75), scale_from=scale_from,
              colour_on_device=colour_on_device)
    ref = ClipTransform(**kw)(frames, masks, rng=np.random.default_rng(seed))
    out = ClipTransform(**kw, resize_on_device=True)(frames, masks, rng=np.random.default_rng(seed))
    assert ref.device_resize is None
    y0, x0, ch, cw = out.crop
    assert out.device_resize == (ch, cw, *out.size, out.flipped)
    assert out.frames.shape[-2:] == (ch, cw)
    if colour_on_device:  # no pixel copied in the transform: a view of the decoded frames
        assert out.frames.data_ptr() == frames[:, :, y0, x0].data_ptr()
    for name in ("masks", "pad_mask", "keep", "colour"):
        a, b = getattr(ref, name), getattr(out, name)
        assert (a is None and b is None) or torch.equal(a, b), name
    spec = torch.tensor([[int(v) for v in out.device_resize]])
    done = finish_frames(out.frames[None], spec, tuple(out.pad_mask.shape), PAD_VALUE)[0]
    assert torch.equal(done, ref.frames)  # bit-identical on the CPU: the same uint8 kernel on the same pixels


def test_float_kernel_is_within_one_of_the_uint8_kernel() -> None:
    frames, _ = clip(0, h=60, w=90)
    exact = resize_frames(frames, 77, 131)
    approx = resize_frames(frames, 77, 131, uint8_kernel=False)  # what other devices run
    assert approx.dtype == torch.uint8 and approx.shape == exact.shape == (3, 3, 77, 131)
    assert (approx.int() - exact.int()).abs().max() <= 1
    ref = F.interpolate(frames.float(), size=(77, 131), mode="bilinear", antialias=True, align_corners=False)
    assert torch.equal(approx, ref.round().clamp(0, 255).to(torch.uint8))


@pytest.mark.parametrize("task", ["vis", "vos"])
def test_dataset_batches_are_the_same_either_way(task: str, tmp_path) -> None:
    fmt = "ytvis" if task == "vis" else "davis"
    root = ensure_synthetic(fmt, tmp_path, height=96, width=128, videos_train=3, videos_val=1, frames=10)
    record = get_format(fmt).read(root, "train")
    sampler = VOSClipSampler() if task == "vos" else InstanceClipSampler(factor=2.0)

    def dataset(on_device: bool) -> ClipDataset:
        # a crop that cannot keep the targets falls back to the whole frame: batches mix crop sizes
        transform = ClipTransform(min_dims=(64, 80), max_dim=160, crop_fraction=(0.5, 0.5), crop_retries=1,
                                  resize_on_device=on_device)
        return ClipDataset(record, sampler, transform, task=task, samples_per_video=4, prompts=task == "vos")

    ref_ds, dev_ds = dataset(False), dataset(True)
    sizes = set()
    for start in range(0, len(ref_ds), 3):
        idx = range(start, min(start + 3, len(ref_ds)))
        ref = ref_ds.collate([ref_ds[i] for i in idx])
        batch = dev_ds.collate([dev_ds[i] for i in idx])
        assert batch.device_resize is not None and ref.device_resize is None
        # instance masks travel as rectangles; VOS masks are painted in the worker (its prompt points need them)
        assert all((s.mask_rects is not None) == (task == "vis") for s in batch.samples)
        sizes.update(tuple(r[:2]) for r in batch.device_resize.tolist())
        done = batch.to("cpu")
        assert done.device_resize is None and torch.equal(done.frames, ref.frames)
        assert torch.equal(done.pad_mask, ref.pad_mask) and torch.equal(done.colour, ref.colour)
        for a, b in zip(ref.samples, done.samples, strict=True):
            assert torch.equal(a.masks, b.masks) and torch.equal(a.track_ids, b.track_ids)
            assert torch.equal(a.frames, b.frames) and b.device_resize is None
            assert (a.points is None and b.points is None) or torch.equal(a.points, b.points)
    assert len(sizes) > 1  # whole frames and crops were batched together


def test_collate_and_finish_frames_check_their_inputs() -> None:
    frames, masks = clip(1)
    on = ClipTransform(min_dims=(48,), max_dim=100, resize_on_device=True)
    off = ClipTransform(min_dims=(48,), max_dim=100)
    assert ClipTransform(train=False, resize_on_device=True)(frames, masks, rng=np.random.default_rng(0)
                                                             ).device_resize is None  # evaluation: final frames
    from vidseg.data.clip_dataset import ClipSample

    def sample(tr: ClipTransform) -> ClipSample:
        o = tr(frames, masks, rng=np.random.default_rng(0))
        return ClipSample(frames=o.frames, masks=o.masks, track_ids=o.keep, class_ids=o.keep, pad_mask=o.pad_mask,
                          dataset="d", device_resize=o.device_resize)

    with pytest.raises(ClipSamplingError, match="with and without device_resize"):
        collate_clips([sample(on), sample(off)], "vis")
    batch = collate_clips([sample(on)], "vis")
    with pytest.raises(ValueError, match=r"device_resize must be \[1, 5\]"):
        finish_frames(batch.frames, torch.zeros(2, 5, dtype=torch.int64), (64, 64), PAD_VALUE)
    with pytest.raises(ValueError, match="clip 0: crop 99x10 of frames"):
        finish_frames(batch.frames, torch.tensor([[99, 10, 20, 20, 0]]), (64, 64), PAD_VALUE)


def test_stacked_crop_views_keep_the_channels_last_order() -> None:
    hwc = torch.arange(2 * 3 * 20 * 30 * 3, dtype=torch.int32).to(torch.uint8).view(2, 3, 20, 30, 3)
    crops = [hwc[k].permute(0, 3, 1, 2)[:, :, 2:12, 5:25] for k in range(2)]  # views, not dense
    out = stack_for_handover(crops)
    assert torch.equal(out, torch.stack(crops))
    assert out.stride() == (3 * 10 * 20 * 3, 10 * 20 * 3, 1, 20 * 3, 3)  # one dense copy, channels-last
