"""`RLEClipMasks`: resizing straight from COCO run lengths equals decoding with pycocotools then gathering, window
tests equal reading the decoded pixels, `ClipTransform` and `ClipDataset` give the same clips with RLE masks as
with decoded ones (crops, flips, VOS reference frames), and bad strings or sizes name the video, track and frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from vidseg.data.clip_dataset import ClipDataset
from vidseg.data.formats import get_format
from vidseg.data.records import AnnotationFormatError
from vidseg.data.rle_masks import RLEClipMasks
from vidseg.data.sampling import InstanceClipSampler, VOSClipSampler
from vidseg.data.synthetic import ensure_synthetic
from vidseg.data.transforms import ClipTransform, _nearest_index

H, W = 37, 53


def masks_zoo(seed: int) -> np.ndarray:
    """bool [N, T, H, W]: random blobs, noise, empty, full, one pixel, a full column, the last pixel."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    zoo = []
    for _ in range(3):
        cy, cx, r = g.uniform(0, H), g.uniform(0, W), g.uniform(3, 15)
        zoo.append((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)
    zoo += [g.random((H, W)) < 0.3, np.zeros((H, W), bool), np.ones((H, W), bool)]
    one, column, last = (np.zeros((H, W), bool) for _ in range(3))
    one[g.integers(H), g.integers(W)] = True
    column[:, g.integers(W)] = True
    last[-1, -1] = True
    zoo += [one, column, last]
    return np.stack(zoo).reshape(3, 3, H, W)


def encode(masks: np.ndarray, absent: set[tuple[int, int]] = frozenset()) -> list[list[dict | None]]:
    out = []
    for n in range(masks.shape[0]):
        row = []
        for t in range(masks.shape[1]):
            rle = mask_utils.encode(np.asfortranarray(masks[n, t].astype(np.uint8)))
            row.append(None if (n, t) in absent else {"size": rle["size"], "counts": rle["counts"].decode()})
        out.append(row)
    return out


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("crop", "out_hw", "flip"), [
    ((0, 0, H, W), (H, W), False), ((3, 5, 30, 40), (61, 77), False), ((3, 5, 30, 40), (61, 77), True),
    ((0, 0, H, W), (12, 20), True), ((10, 2, 20, 50), (20, 50), True),
])
def test_resize_from_runs_equals_decode_then_gather(seed: int, crop: tuple, out_hw: tuple, flip: bool) -> None:
    dense = masks_zoo(seed)
    absent = {(0, 1), (2, 2)}
    for n, t in absent:
        dense[n, t] = False
    y0, x0, ch, cw = crop
    rows, cols = _nearest_index(ch, out_hw[0], y0, False), _nearest_index(cw, out_hw[1], x0, flip)
    out = np.zeros((3, 3, out_hw[0] + 5, out_hw[1] + 3), bool)
    nonempty = RLEClipMasks(encode(dense, absent), 3, H, W).resize_into(rows, cols, out)
    want = dense[:, :, rows][:, :, :, cols]
    assert np.array_equal(out[:, :, : out_hw[0], : out_hw[1]], want) and not out[:, :, out_hw[0]:].any()
    assert not out[:, :, :, out_hw[1]:].any() and np.array_equal(nonempty, want.any((-2, -1)))


def test_window_tests_equal_the_decoded_pixels() -> None:
    dense = masks_zoo(2)
    rle = RLEClipMasks(encode(dense), 3, H, W)
    g = np.random.default_rng(0)
    flat = dense.reshape(-1, H, W)
    for _ in range(40):
        top, left = int(g.integers(H)), int(g.integers(W))
        window = (top, int(g.integers(top + 1, H + 1)), left, int(g.integers(left + 1, W + 1)))
        pick = g.permutation(len(flat))[: int(g.integers(1, len(flat)))]
        want = [flat[m, window[0]:window[1], window[2]:window[3]].any() for m in pick]
        assert rle.has_pixels_in(pick, window).tolist() == want


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_boxes_from_runs_equal_the_decoded_pixels_and_toBbox(seed: int) -> None:
    dense = masks_zoo(seed)
    g = np.random.default_rng(seed)
    column_major = np.zeros(W * H, bool)  # one run from inside column 2 to inside column 3
    column_major[int(g.integers(1, H // 2)) + 2 * H: 3 * H + 5] = True
    dense[0, 0] = column_major.reshape(W, H).T
    assert dense[0, 0, 0].any() and dense[0, 0, -1].any() and not dense[0, 0, :, 4:].any()
    absent = {(1, 1)}
    dense[1, 1] = False
    rles = encode(dense, absent)
    boxes = RLEClipMasks(rles, 3, H, W).boxes()
    assert boxes.shape == (3, 3, 4) and boxes.dtype == np.int64
    for n in range(3):
        for t in range(3):
            ys, xs = np.nonzero(dense[n, t])
            want = [ys.min(), ys.max() + 1, xs.min(), xs.max() + 1] if ys.size else [0, 0, 0, 0]
            assert boxes[n, t].tolist() == want, (n, t)
            if rles[n][t] is not None:  # as pycocotools' toBbox gives them (x, y, w, h)
                x, y, w, h = mask_utils.toBbox(rles[n][t]).round().astype(int)
                assert boxes[n, t].tolist() == [y, y + h, x, x + w]


@pytest.mark.parametrize("reference", [None, 0])
def test_transform_gives_the_same_clip_from_runs_and_from_decoded_masks(reference: int | None) -> None:
    dense = masks_zoo(3)
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, H, W, 3), np.uint8)).permute(0, 3, 1, 2)
    boxes = np.zeros((3, 3, 4), np.int64)
    for n in range(3):
        for t in range(3):
            ys, xs = np.nonzero(dense[n, t])
            if ys.size:
                boxes[n, t] = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    transform = ClipTransform(min_dims=(40, 64), max_dim=100, crop_fraction=(0.5, 0.6))
    for seed in range(12):
        a = transform(frames, torch.from_numpy(dense), rng=np.random.default_rng(seed), boxes=boxes,
                      reference_frame=reference)
        b = transform(frames, RLEClipMasks(encode(dense), 3, H, W), rng=np.random.default_rng(seed), boxes=boxes,
                      reference_frame=reference)
        assert a.crop == b.crop and a.flipped == b.flipped and torch.equal(a.keep, b.keep)
        assert torch.equal(a.masks, b.masks) and torch.equal(a.frames, b.frames)


@pytest.mark.parametrize(("task", "fmt"), [("vis", "ytvis"), ("vos", "ytvis"), ("pet", "burst")])
def test_dataset_items_are_the_same_with_and_without_decoding(task: str, fmt: str, tmp_path) -> None:
    root = ensure_synthetic(fmt, tmp_path, height=96, width=128, videos_train=3, videos_val=1, frames=10)
    record = get_format(fmt).read(root, "train")
    sampler = VOSClipSampler() if task in ("vos", "pet") else InstanceClipSampler(factor=2.0)
    transform = ClipTransform(min_dims=(64, 80), max_dim=160, crop_fraction=(0.75, 0.75))

    def dataset(rle: bool) -> ClipDataset:
        return ClipDataset(record, sampler, transform, task=task, samples_per_video=4, rle_masks=rle)

    fast, slow = dataset(True), dataset(False)
    for i in range(len(fast)):
        a, b = fast[i], slow[i]
        for name in ("frames", "masks", "track_ids", "class_ids", "pad_mask"):
            assert torch.equal(getattr(a, name), getattr(b, name)), (i, name)
        assert (a.points is None) == (b.points is None)
        assert a.points is None or torch.equal(a.points.isnan(), b.points.isnan())
        assert a.points is None or torch.equal(a.points.nan_to_num(), b.points.nan_to_num())


def test_bad_strings_and_sizes_name_the_mask() -> None:
    rles = encode(masks_zoo(0)[:1, :2])

    def where(n: int, t: int) -> str:
        return f"video 'v' frame {t + 10} track {n + 1}"

    broken = [[rles[0][0], {"size": [H, W], "counts": rles[0][1]["counts"][:-3]}]]
    with pytest.raises(AnnotationFormatError, match=r"video 'v' frame 11 track 1: RLE counts string"):
        RLEClipMasks(broken, 2, H, W, where=where)
    wrong = [[rles[0][0], {"size": [H + 1, W], "counts": rles[0][1]["counts"]}]]
    with pytest.raises(AnnotationFormatError, match=rf"video 'v' frame 11 track 1: mask of size {H + 1}x{W}"):
        RLEClipMasks(wrong, 2, H, W, where=where)
    with pytest.raises(ValueError, match="RLE masks need their boxes"):
        ClipTransform()(torch.zeros(2, 3, H, W, dtype=torch.uint8), RLEClipMasks(rles, 2, H, W),
                        rng=np.random.default_rng(0))


def test_zero_targets_and_bad_arguments() -> None:
    frames = torch.zeros(2, 3, H, W, dtype=torch.uint8)
    empty = RLEClipMasks([], 2, H, W)
    assert empty.shape == (0, 2, H, W)
    out = ClipTransform(min_dims=(32,), max_dim=64)(frames, empty, rng=np.random.default_rng(0),
                                                     boxes=np.zeros((0, 2, 4), np.int64))
    assert out.masks.shape[:2] == (0, 2) and out.keep.numel() == 0
    rles = RLEClipMasks(encode(masks_zoo(0)[:1, :2]), 2, H, W)
    with pytest.raises(ValueError, match="every target needs 3 entries"):
        RLEClipMasks(encode(masks_zoo(0)[:1, :2]), 3, H, W)
    with pytest.raises(IndexError, match=r"mask indices must be in \[0, 2\)"):
        rles.has_pixels_in(np.array([2]), (0, H, 0, W))
    rows, cols = np.arange(H), np.arange(W)
    with pytest.raises(ValueError, match="out must be C-contiguous bool"):
        rles.resize_into(rows, cols, np.zeros((1, 2, H - 1, W), bool))
    with pytest.raises(ValueError, match="rows must be non-decreasing"):
        rles.resize_into(rows[::-1], cols, np.zeros((1, 2, H, W), bool))
    with pytest.raises(ValueError, match="cols must be in"):
        rles.resize_into(rows, cols + 1, np.zeros((1, 2, H, W), bool))
