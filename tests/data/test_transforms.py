"""Clip transforms: one set of parameters per clip, masks/points aligned with frames, uint8, padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from vidseg.data.records import IGNORE_LABEL, PAD_VALUE
from vidseg.data.transforms import ClipTransform, colour_matrix, resize_shape

NO_JITTER = dict(hue_saturation=0.0, contrast=(1.0, 1.0), brightness=0.0)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def noise_frames(t: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = np.random.default_rng(seed)
    return torch.from_numpy(g.integers(0, 256, (t, h, w, 3), dtype=np.uint8)).permute(0, 3, 1, 2)


def painted_clip(h: int = 60, w: int = 90) -> tuple[torch.Tensor, torch.Tensor]:
    """Black frames with target 0 painted red and target 1 painted green (different places per frame)."""
    t = 3
    masks = torch.zeros((2, t, h, w), dtype=torch.bool)
    for f in range(t):
        masks[0, f, 10 + 3 * f : 30 + 3 * f, 8 + 5 * f : 40 + 5 * f] = True
        masks[1, f, 35:55, 50 + 4 * f : 80] = True
    frames = torch.zeros((t, 3, h, w), dtype=torch.uint8)
    frames[:, 0][masks[0]] = 255
    frames[:, 1][masks[1]] = 255
    return frames, masks


def test_resize_shape_rule():
    assert resize_shape(480, 854, 512, 1024) == (512, 911)
    assert resize_shape(480, 1920, 512, 1024) == (256, 1024)  # long side capped
    assert resize_shape(720, 1280, 448, 1333) == (448, 796)


def test_eval_mode_is_resize_and_pad_only():
    frames = noise_frames(2, 50, 70)
    masks = torch.zeros((1, 2, 50, 70), dtype=torch.bool)
    masks[0, :, 10:20, 10:30] = True
    tr = ClipTransform(train=False, min_dims=(40, 100), max_dim=1000)
    out = tr(frames, masks, rng=rng())
    h, w = resize_shape(50, 70, 100, 1000)
    assert out.size == (h, w) and out.frames.shape == (2, 3, 128, 192)
    assert out.frames.dtype == torch.uint8 and not out.flipped and out.crop == (0, 0, 50, 70)
    ref = F.interpolate(frames.float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    diff = (out.frames[:, :, :h, :w].float() - ref.round().clamp(0, 255)).abs()
    assert diff.max() <= 1
    assert (out.frames[:, :, h:] == PAD_VALUE).all() and (out.frames[:, :, :, w:] == PAD_VALUE).all()
    assert out.pad_mask[:h, :w].all() and out.pad_mask.sum() == h * w
    # deterministic: a second call with another rng gives the same output
    again = tr(frames, masks, rng=rng(5))
    assert torch.equal(again.frames, out.frames) and torch.equal(again.masks, out.masks)


@pytest.mark.parametrize("seed", range(6))
def test_train_output_types_and_padding(seed):
    frames, masks = painted_clip()
    semantic = masks[0].long() * 3 + masks[1].long() * 7
    out = ClipTransform(min_dims=(70, 90), max_dim=200)(frames, masks, semantic=semantic, rng=rng(seed))
    t, _, hp, wp = out.frames.shape
    assert out.frames.dtype == torch.uint8 and out.masks.dtype == torch.bool
    assert hp % 64 == 0 and wp % 64 == 0 and out.masks.shape[2:] == (hp, wp)
    h, w = out.size
    assert h < hp + 64 and w < wp + 64 and min(h, w) in (70, 90) or max(h, w) == 200
    assert out.semantic.dtype == torch.int64 and (out.semantic[:, h:] == IGNORE_LABEL).all()
    assert (out.semantic[:, :, w:] == IGNORE_LABEL).all()
    assert not out.masks[..., h:, :].any() and not out.masks[..., w:].any()
    assert (out.frames[:, :, h:] == PAD_VALUE).all()
    # semantic went through exactly the same geometry as the masks
    kept = {int(k): i for i, k in enumerate(out.keep)}
    valid = out.semantic[:, :h, :w]
    for k, cls in ((0, 3), (1, 7)):
        if k in kept:
            assert torch.equal(valid == cls, out.masks[kept[k], :, :h, :w])


@pytest.mark.parametrize("seed", range(10))
def test_masks_stay_aligned_with_painted_pixels(seed):
    frames, masks = painted_clip()
    tr = ClipTransform(min_dims=(96, 120), max_dim=400, crop_fraction=(0.75, 0.75), **NO_JITTER)
    out = tr(frames, masks, rng=rng(seed))
    h, w = out.size
    colour_of = {0: 0, 1: 1}  # target -> channel painted
    for i, k in enumerate(out.keep.tolist()):
        channel = out.frames[:, colour_of[k], :h, :w]
        m = out.masks[i, :, :h, :w].numpy()
        for f in range(3):
            inner = ndimage.binary_erosion(m[f], iterations=2)
            outer = ~ndimage.binary_dilation(m[f], iterations=2)
            assert (channel[f].numpy()[inner] > 200).all()
            assert (channel[f].numpy()[outer] < 55).all()


def test_flip_and_crop_are_shared_by_all_frames():
    frames = noise_frames(3, 40, 64)
    frames[1] = frames[0]
    frames[2] = frames[0]
    masks = torch.ones((1, 3, 40, 64), dtype=torch.bool)
    seen_flip = set()
    for seed in range(8):
        out = ClipTransform(min_dims=(40,), max_dim=200)(frames, masks, rng=rng(seed))
        assert torch.equal(out.frames[0], out.frames[1]) and torch.equal(out.frames[0], out.frames[2])
        seen_flip.add(out.flipped)
    assert seen_flip == {True, False}


def test_each_frame_gets_the_same_parameters_as_alone():
    a, b = noise_frames(1, 40, 64, seed=1), noise_frames(1, 40, 64, seed=2)
    masks2 = torch.ones((1, 2, 40, 64), dtype=torch.bool)
    tr = ClipTransform(min_dims=(48,), max_dim=200)
    for seed in range(4):
        pair = tr(torch.cat([a, b]), masks2, rng=rng(seed))
        bb = tr(torch.cat([b, b]), masks2, rng=rng(seed))
        aa = tr(torch.cat([a, a]), masks2, rng=rng(seed))
        assert torch.equal(pair.frames[1], bb.frames[0]) and torch.equal(pair.frames[0], aa.frames[0])


def test_flip_mirrors_the_clip():
    frames = noise_frames(2, 32, 48)
    masks = torch.zeros((1, 2, 32, 48), dtype=torch.bool)
    masks[0, :, 5:9, 2:6] = True
    tr = ClipTransform(min_dims=(32,), max_dim=100, crop_fraction=None, **NO_JITTER)
    outs = {}
    for seed in range(10):
        out = tr(frames, masks, rng=rng(seed))
        outs[out.flipped] = out
    assert set(outs) == {True, False}
    plain, flipped = outs[False], outs[True]
    assert torch.equal(plain.frames[..., :32, :48], frames)  # same size: no resize, no jitter
    assert torch.equal(flipped.frames[..., :32, :48], frames.flip(-1))
    assert torch.equal(flipped.masks[..., :32, :48], masks.flip(-1))


def test_colour_matrix_geometry():
    red = np.array([255.0, 0.0, 0.0])
    m, b = colour_matrix(hue=120.0, saturation=1.0, contrast=1.0, brightness=0.0)
    np.testing.assert_allclose(m @ red + b, [0, 255, 0], atol=1e-3)  # 120° about grey: R -> G
    m, b = colour_matrix(hue=0.0, saturation=0.0, contrast=1.0, brightness=0.0)
    np.testing.assert_allclose(m @ np.array([30.0, 60.0, 90.0]) + b, [60, 60, 60], atol=1e-3)
    m, b = colour_matrix(hue=33.0, saturation=1.3, contrast=0.9, brightness=10.0)
    np.testing.assert_allclose(m @ np.full(3, 128.0) + b, np.full(3, 138.0), atol=1e-3)  # grey stays grey
    m, b = colour_matrix(hue=0.0, saturation=1.0, contrast=1.05, brightness=-20.0)
    np.testing.assert_allclose(m @ np.array([10.0, 128.0, 250.0]) + b,
                               [128 + 1.05 * (10 - 128) - 20, 108, 128 + 1.05 * 122 - 20], atol=1e-3)


def test_cpu_colour_jitter_matches_float_reference_and_ranges():
    frames = noise_frames(2, 24, 32)
    masks = torch.ones((1, 2, 24, 32), dtype=torch.bool)
    brightness_only = ClipTransform(min_dims=(24,), max_dim=100, crop_fraction=None, flip_p=0.0,
                                    hue_saturation=0.0, contrast=(1.0, 1.0), brightness=25.0,
                                    colour_on_device=False)
    shifts = []
    for seed in range(20):
        out = brightness_only(frames, masks, rng=rng(seed))
        delta = out.frames[..., :24, :32].int() - frames.int()
        unclipped = (frames > 30) & (frames < 225)
        shift = delta[unclipped]
        assert shift.max() - shift.min() <= 1  # one shift for every pixel of every frame
        shifts.append(float(shift.float().mean()))
    assert min(shifts) >= -25.5 and max(shifts) <= 25.5 and max(shifts) - min(shifts) > 10

    full = ClipTransform(min_dims=(24,), max_dim=100, crop_fraction=None, flip_p=0.0, colour_on_device=False)
    g = rng(3)
    out = full(frames, masks, rng=g)
    # redraw the same parameters in the documented order and compare with a float reference
    g = rng(3)
    g.random(), g.integers(1)  # flip, short side
    hue, sat = g.uniform(-12, 12) / 255 * 360, 1 + g.uniform(-12, 12) / 128
    m, b = colour_matrix(hue, sat, g.uniform(0.95, 1.05), g.uniform(-25, 25))
    pix = frames.permute(0, 2, 3, 1).double().numpy()
    ref = np.clip(np.round(pix @ m.T.astype(np.float64) + b), 0, 255)
    got = out.frames[..., :24, :32].permute(0, 2, 3, 1).numpy().astype(np.float64)
    assert np.abs(got - ref).max() <= 1


def test_empty_targets_dropped_and_order_kept():
    frames = noise_frames(2, 40, 40)
    masks = torch.zeros((3, 2, 40, 40), dtype=torch.bool)
    masks[0, :, 0:10, 0:10] = True
    masks[2, :, 20:40, 20:40] = True  # target 1 is empty everywhere
    out = ClipTransform(train=False, min_dims=(40,), max_dim=100)(frames, masks, rng=rng())
    assert out.keep.tolist() == [0, 2]
    assert torch.equal(out.masks[0, :, :40, :40], masks[0]) and torch.equal(out.masks[1, :, :40, :40], masks[2])


def test_targets_emptied_by_resize_are_dropped():
    frames = noise_frames(1, 128, 128)
    masks = torch.zeros((2, 1, 128, 128), dtype=torch.bool)
    masks[0, 0, 1, 1] = True  # nearest 4x downscale samples source rows/cols 2, 6, 10, ...: lost
    masks[1, 0, 6, 10] = True  # on the sampled grid: kept at output (1, 2)
    points = torch.tensor([[1.0, 1.0], [10.0, 6.0]])
    out = ClipTransform(train=False, min_dims=(32,), max_dim=100)(frames, masks, points=points, rng=rng())
    assert out.keep.tolist() == [1]
    assert out.masks.shape[0] == 1 and out.masks[0, 0].nonzero().tolist() == [[1, 2]]
    np.testing.assert_allclose(out.points.numpy(), [[(10 + 0.5) / 4 - 0.5, (6 + 0.5) / 4 - 0.5]])


def test_points_follow_crop_flip_and_scale():
    checked = 0
    for seed in range(12):
        checked += _check_points(seed)
    assert checked >= 6


def _check_points(seed: int) -> int:
    frames = noise_frames(2, 60, 80)
    masks = torch.zeros((2, 2, 60, 80), dtype=torch.bool)
    masks[0, :, 20:31, 30:41] = True  # centre (35, 25)
    masks[1, :, 40:51, 5:16] = True  # centre (10, 45)
    points = torch.tensor([[35.0, 25.0], [10.0, 45.0]])
    tr = ClipTransform(min_dims=(90, 120), max_dim=300, crop_fraction=(0.8, 0.8))
    out = tr(frames, masks, points=points, rng=rng(seed))
    h, w = out.size
    y0, x0, ch, cw = out.crop
    boxes = {0: (20, 31, 30, 41), 1: (40, 51, 5, 16)}
    checked = 0
    for i, k in enumerate(out.keep.tolist()):
        top, bottom, left, right = boxes[k]
        if top < y0 or left < x0 or bottom > y0 + ch or right > x0 + cw:
            continue  # cut by the crop: the point is no longer the mask's centre
        checked += 1
        ys, xs = np.nonzero(out.masks[i, 0, :h, :w].numpy())
        x, y = out.points[i].tolist()
        assert abs(x - xs.mean()) <= 1.0 and abs(y - ys.mean()) <= 1.0
        assert out.masks[i, 0, round(y), round(x)]
    return checked


def test_vos_reference_frame_rules():
    frames = noise_frames(3, 64, 64)
    masks = torch.zeros((2, 3, 64, 64), dtype=torch.bool)
    masks[0, 0, 28:36, 28:36] = True  # small object in the reference frame (every half crop meets it)
    masks[0, 1:, 30:40, 30:40] = True
    masks[1, 1:, 10:20, 10:20] = True  # absent from the reference frame
    tr = ClipTransform(min_dims=(64,), max_dim=200, crop_fraction=(0.5, 0.5), scale_from="image")
    for seed in range(20):
        out = tr(frames, masks, rng=rng(seed), reference_frame=0)
        assert out.keep.tolist() == [0]
        assert out.masks[0, 0].any()  # the crop kept the reference-frame mask
        assert out.size == (32, 32)  # crop of half the image at the full image's scale (1.0)
    anywhere = ClipTransform(train=False, min_dims=(64,), max_dim=200)(frames, masks, rng=rng())
    assert anywhere.keep.tolist() == [0, 1]


def test_crop_retries_keep_a_target():
    frames = noise_frames(1, 100, 100)
    masks = torch.zeros((1, 1, 100, 100), dtype=torch.bool)
    masks[0, 0, 0:12, 0:12] = True  # only crops starting near the corner contain it
    tr = ClipTransform(min_dims=(50,), max_dim=200, crop_fraction=(0.5, 0.5), crop_retries=5)
    for seed in range(30):
        out = tr(frames, masks, rng=rng(seed))
        assert out.keep.tolist() == [0]  # either a crop containing it or (after 5 misses) no crop
        y0, x0, ch, cw = out.crop
        assert (ch, cw) == (100, 100) or (y0 < 12 and x0 < 12)


def test_bad_inputs_raise():
    tr = ClipTransform()
    with pytest.raises(ValueError, match="uint8"):
        tr(torch.zeros((1, 3, 8, 8)), torch.zeros((0, 1, 8, 8), dtype=torch.bool), rng=rng())
    with pytest.raises(ValueError, match="masks"):
        tr(torch.zeros((1, 3, 8, 8), dtype=torch.uint8), torch.zeros((1, 2, 8, 8), dtype=torch.bool), rng=rng())
    with pytest.raises(ValueError, match="crop_fraction"):
        ClipTransform(crop_fraction=(0.0, 0.5))


def blob_masks(n: int, t: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = np.random.default_rng(seed)
    masks = np.zeros((n, t, h, w), bool)
    for k in range(n):
        for f in range(t):
            cy, cx, ry, rx = g.integers(0, h), g.integers(0, w), g.integers(2, h // 3), g.integers(2, w // 3)
            yy, xx = np.ogrid[:h, :w]
            masks[k, f] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    masks[0, 1] = False  # an empty mask
    return torch.from_numpy(masks)


@pytest.mark.parametrize("seed", range(8))
def test_mask_geometry_matches_torch_nearest_reference(seed):
    masks = blob_masks(4, 3, 50, 70, seed)
    frames = noise_frames(3, 50, 70, seed)
    tr = ClipTransform(min_dims=(45, 80), max_dim=200, crop_fraction=(0.75, 0.6))
    out = tr(frames, masks, rng=rng(seed))
    y0, x0, ch, cw = out.crop
    h, w = out.size
    ref = F.interpolate(masks[..., y0 : y0 + ch, x0 : x0 + cw].float(), size=(h, w), mode="nearest-exact") > 0.5
    if out.flipped:
        ref = ref.flip(-1)
    ref = ref[out.keep]
    assert torch.equal(out.masks[..., :h, :w], ref)
    assert not out.masks[..., h:, :].any() and not out.masks[..., :, w:].any()
    dropped = sorted(set(range(4)) - set(out.keep.tolist()))
    full_ref = F.interpolate(masks[..., y0 : y0 + ch, x0 : x0 + cw].float(), size=(h, w), mode="nearest-exact")
    assert all(not full_ref[k].any() for k in dropped)
    # the same masks in column-major memory (as pycocotools decodes them) give the same result
    transposed = masks.transpose(-1, -2).contiguous().transpose(-1, -2)
    again = tr(frames, transposed, rng=rng(seed))
    assert torch.equal(again.masks, out.masks) and torch.equal(again.frames, out.frames)


@pytest.mark.parametrize("seed", range(6))
def test_jitter_path_crops_and_flips_like_the_plain_path(seed):
    frames = noise_frames(2, 40, 64, seed)
    masks = torch.ones((1, 2, 40, 64), dtype=torch.bool)
    plain = ClipTransform(min_dims=(30,), max_dim=100, **NO_JITTER)(frames, masks, rng=rng(seed))
    jit = ClipTransform(min_dims=(30,), max_dim=100)(frames, masks, rng=rng(seed))
    assert plain.crop == jit.crop and plain.flipped == jit.flipped and plain.size == jit.size == (30, 48)
    h, w = plain.size
    x = plain.frames[..., :h, :w].permute(0, 2, 3, 1).reshape(-1, 3).double().numpy()
    y = jit.frames[..., :h, :w].permute(0, 2, 3, 1).reshape(-1, 3).double().numpy()
    design = np.concatenate([x, np.ones((len(x), 1))], 1)
    unclipped = ((y > 0) & (y < 255)).all(1)
    assert unclipped.mean() > 0.5
    # one affine colour map for every pixel of the clip (noise frames: any crop/flip mismatch breaks it)
    coef, *_ = np.linalg.lstsq(design[unclipped], y[unclipped], rcond=None)
    assert np.abs(design[unclipped] @ coef - y[unclipped]).max() <= 1.01
