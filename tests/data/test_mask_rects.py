"""Masks as rectangles (data.mask_rects): the rectangles of the nearest-resized runs, painted by either painter, are
exactly the masks decoded then gathered; bad rectangles are named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_rle_masks import H, W, encode, masks_zoo

from vidseg.data.mask_rects import paint_rects
from vidseg.data.rle_masks import RLEClipMasks
from vidseg.data.transforms import ClipTransform, _nearest_index


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("crop", "out_hw", "flip"), [
    ((0, 0, H, W), (H, W), False), ((3, 5, 30, 40), (61, 77), False), ((3, 5, 30, 40), (61, 77), True),
    ((0, 0, H, W), (12, 20), True), ((10, 2, 20, 50), (20, 50), True),
])
@pytest.mark.parametrize("compiled", [True, False])
def test_painted_rectangles_equal_decode_then_gather(seed: int, crop: tuple, out_hw: tuple, flip: bool,
                                                     compiled: bool) -> None:
    dense = masks_zoo(seed)  # blobs, noise, empty, full frame (one run over every column), one pixel, ...
    absent = {(0, 1), (2, 2)}
    for n, t in absent:
        dense[n, t] = False
    y0, x0, ch, cw = crop
    rows, cols = _nearest_index(ch, out_hw[0], y0, False), _nearest_index(cw, out_hw[1], x0, flip)
    rects, nonempty = RLEClipMasks(encode(dense, absent), 3, H, W).resize_rects(rows, cols)
    want = dense[:, :, rows][:, :, :, cols]
    assert rects.dtype == np.int32 and np.array_equal(nonempty, want.any((-2, -1)))
    painted = paint_rects(torch.from_numpy(rects), 3, 3, out_hw[0] + 5, out_hw[1] + 3, compiled=compiled)
    assert painted.dtype == torch.bool and painted.shape == (3, 3, out_hw[0] + 5, out_hw[1] + 3)
    assert np.array_equal(painted[:, :, : out_hw[0], : out_hw[1]].numpy(), want)
    assert not painted[:, :, out_hw[0]:].any() and not painted[:, :, :, out_hw[1]:].any()
    q = rects[:, 0].astype(np.int64)  # disjoint within a mask: the areas add up to the painted pixels
    area = (rects[:, 2] - rects[:, 1]).astype(np.int64) * (rects[:, 4] - rects[:, 3])
    assert np.array_equal(np.bincount(q, area, minlength=9), want.reshape(9, -1).sum(1))


def test_runs_over_many_columns_fill_more_rectangles_than_runs() -> None:
    full = np.ones((1, 1, H, W), bool)  # one run over every column: a rectangle per column
    rle = RLEClipMasks(encode(full), 1, H, W)
    cols = _nearest_index(W, 80, 0, True)
    rects, nonempty = rle.resize_rects(_nearest_index(H, 30, 0, False), cols)
    assert len(rects) == W > len(rle._runs) and nonempty.all()  # one per source column
    assert paint_rects(torch.from_numpy(rects), 1, 1, 30, 80).all()


def test_transform_hands_over_rectangles_of_the_kept_targets() -> None:
    dense = masks_zoo(4)
    dense[1] = False  # a target absent from the clip is dropped and the others renumbered
    g = np.random.default_rng(0)
    frames = torch.from_numpy(g.integers(0, 256, (3, H, W, 3), np.uint8)).permute(0, 3, 1, 2)
    boxes = np.zeros((3, 3, 4), np.int64)
    for n in range(3):
        for t in range(3):
            ys, xs = np.nonzero(dense[n, t])
            if len(ys):
                boxes[n, t] = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    tr = ClipTransform(min_dims=(50,), max_dim=90, crop_fraction=(0.8, 0.8), resize_on_device=True)
    rle = RLEClipMasks(encode(dense), 3, H, W)
    ref = tr(frames, torch.from_numpy(dense), rng=np.random.default_rng(3), boxes=boxes)
    out = tr(frames, rle, rng=np.random.default_rng(3), boxes=boxes, masks_as_rects=True)
    assert ref.mask_rects is None and torch.equal(out.keep, ref.keep) and out.keep.tolist() == [0, 2]
    assert out.masks.shape == (2, 3, 0, 0) and out.mask_rects.dtype == torch.int32
    painted = paint_rects(out.mask_rects, 2, 3, *ref.masks.shape[-2:])
    assert torch.equal(painted, ref.masks)
    # evaluation clips, prompts (masks_as_rects=False) and resizing in the worker keep painted masks
    for kw, transform in (({}, tr), ({"masks_as_rects": True}, ClipTransform(min_dims=(50,), max_dim=90)),
                          ({"masks_as_rects": True}, ClipTransform(train=False, resize_on_device=True))):
        assert transform(frames, rle, rng=np.random.default_rng(3), boxes=boxes, **kw).mask_rects is None


def test_bad_rectangles_are_named() -> None:
    with pytest.raises(ValueError, match=r"rects must be \[R, 5\]"):
        paint_rects(torch.zeros(3, 4, dtype=torch.int32), 1, 1, 4, 4)
    with pytest.raises(ValueError, match="rectangles outside 1 x 2 masks of 4x4"):
        paint_rects(torch.tensor([[0, 0, 5, 0, 1]], dtype=torch.int32), 1, 2, 4, 4)
    with pytest.raises(ValueError, match="rectangles outside"):
        paint_rects(torch.tensor([[2, 0, 1, 0, 1]], dtype=torch.int32), 1, 2, 4, 4)
    with pytest.raises(ValueError, match="i1 < i0 or j1 < j0"):  # the two painters would disagree on these
        paint_rects(torch.tensor([[0, 0, 4, 0, 4], [0, 3, 1, 0, 4]], dtype=torch.int32), 1, 1, 4, 4)
    assert not paint_rects(torch.zeros(0, 5, dtype=torch.int32), 2, 1, 3, 3).any()
