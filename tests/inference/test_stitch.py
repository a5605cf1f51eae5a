"""Generic stitching: overlap averaging, IoU matching, track linking, compressed maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from vidseg.inference.stitch import CompressedMaps, OverlapAverager, TrackStitcher, mask_iou, match_by_iou


def _decode(rle) -> np.ndarray:
    return mask_utils.decode(rle).astype(bool)


def test_overlap_averager_means_and_releases() -> None:
    acc = OverlapAverager()
    acc.add(0, 7, torch.tensor([[1.0], [2.0], [3.0]]))
    acc.add(1, 7, torch.tensor([[5.0], [7.0], [9.0]]))
    acc.add(2, 8, torch.tensor([[4.0]]))
    done = dict(acc.pop_finished(2))
    assert set(done) == {0, 1}
    assert done[0][7].item() == 1.0 and done[1][7].item() == 3.5  # (2 + 5) / 2
    assert len(acc) == 2  # frames 2 and 3 still pending
    rest = dict(acc.pop_finished(10))
    assert rest[2][7].item() == 5.0 and rest[2][8].item() == 4.0 and rest[3][7].item() == 9.0
    assert len(acc) == 0


def test_mask_iou_and_matching() -> None:
    a = torch.zeros(3, 2, 4, 4, dtype=torch.bool)
    a[0, :, :2] = True  # top half
    a[1, :, 2:] = True  # bottom half
    # a[2] empty
    b = a[[1, 0, 2]].clone()
    b[1, :, 0, 0] = False  # the top half minus one pixel per frame
    iou = mask_iou(a, b)
    assert iou[0, 1].item() == pytest.approx(14 / 16)
    assert iou[1, 0].item() == 1.0 and iou[2, 2].item() == 0.0 and iou[0, 0].item() == 0.0
    assert sorted(match_by_iou(a, b, 0.5)) == [(0, 1), (1, 0)]  # empty masks never match
    assert match_by_iou(a, b, 0.9) == [(1, 0)]
    assert match_by_iou(a[:0], b, 0.5) == []


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def test_track_stitcher_averages_overlap_logits_and_links_ids() -> None:
    """Clip 1 frames 0-3, clip 2 frames 2-5 (overlap 2), queries given in the opposite order."""
    h = w = 8
    a = torch.full((4, h, w), -5.0)
    a[:, :4] = 5.0  # object A: top half
    b = torch.full((4, h, w), -5.0)
    b[:, 4:] = 5.0  # object B: bottom half
    a2, b2 = a.clone(), b.clone()
    # pixel (0, 7) of A on overlap frame 2: -0.5 then +1.0 -> mean +0.25 (on); pixel (0, 6): +1 then -3 -> off
    a[2, 0, 7], a2[0, 0, 7] = -0.5, 1.0
    a[2, 0, 6], a2[0, 0, 6] = 1.0, -3.0
    st = TrackStitcher(6, _identity, iou_threshold=0.5)
    probs1 = torch.tensor([[0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    probs2 = torch.tensor([[0.4, 0.1, 0.5], [0.3, 0.6, 0.1]])
    ids1 = st.add_clip(0, 0, probs1, torch.stack([a, b]))
    st.finish(2)
    assert ids1 == [1, 2]
    assert st.tracks[1].masks[0] is not None and st.tracks[1].masks[2] is None  # frame 2 not finished yet
    ids2 = st.add_clip(2, 2, probs2, torch.stack([b2, a2]))
    st.finish(6)
    assert ids2 == [2, 1]  # B and A keep their ids across the boundary
    assert len(st.tracks) == 2
    m = _decode(st.tracks[1].masks[2])
    assert m[0, 7] and not m[0, 6]  # the averaged logits, not either clip's
    assert torch.allclose(st.tracks[1].probs, (probs1[0] + probs2[1]) / 2)
    assert torch.allclose(st.tracks[2].probs, (probs1[1] + probs2[0]) / 2)
    assert all(st.tracks[1].masks[f] is not None for f in range(6))


def test_track_stitcher_starts_new_tracks_below_threshold() -> None:
    x = torch.full((1, 3, 4, 4), -1.0)
    x[..., :2, :] = 1.0
    y = torch.full((1, 3, 4, 4), -1.0)
    y[..., 1:3, :] = 1.0  # IoU 1/3 with x on the overlap
    st = TrackStitcher(5, _identity, iou_threshold=0.5)
    st.add_clip(0, 0, torch.tensor([[0.0, 1.0]]), x)
    assert st.add_clip(2, 1, torch.tensor([[0.0, 1.0]]), y) == [2]
    st = TrackStitcher(5, _identity, iou_threshold=0.3)
    st.add_clip(0, 0, torch.tensor([[0.0, 1.0]]), x)
    assert st.add_clip(2, 1, torch.tensor([[0.0, 1.0]]), y) == [1]


def test_compressed_maps_round_trip() -> None:
    rng = np.random.default_rng(0)
    maps = [rng.integers(0, 5, size=(30, 40)).astype(np.int32) for _ in range(4)]
    cm = CompressedMaps(maps[:2])
    cm.append(maps[2])
    cm.append(maps[3])
    assert len(cm) == 4
    for got, want in zip(cm, maps):
        assert got.dtype == np.int32 and np.array_equal(got, want)
    assert np.array_equal(np.stack(cm), np.stack(maps))
