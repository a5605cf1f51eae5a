"""GvSeg components: descriptor H against hand-derived bins and a per-mask Python reference, SPA through the real
decoder, query inits, EMA prototypes, FIFO class queues, ΔH-gated pairs and the contrastive loss forms."""

from __future__ import annotations

import ast
import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vidseg.model.decoder import MaskedAttentionDecoder
from vidseg.model.queries import LearnedQueries, QuerySet, SemanticQueryBank
from vidseg.tasks import gvseg_descriptor
from vidseg.tasks.gvseg import (
    GvSegConfig,
    ShapePositionEncoder,
    association_embedding,
    association_scores,
    descriptor_change,
    downsample_masks,
    frame_descriptors,
    shape_position_descriptor,
    spa_query_adders,
)

U, V, M = 36, 12, 200
OUT = -1.0 / 16.0  # −1/√256
S = 96  # image side; diagonal 96·√2 = 135.76, so one radius bin is 135.76 / 12 = 11.31 px wide


def _disc(cy: float, cx: float, r: float, h: int = S, w: int = S) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _hist(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[h, w] mask → (histogram [U, V] angle-major, position [2])."""
    desc, _ = frame_descriptors(masks[None], U, V, M, OUT)
    return desc[0, :-2].view(U, V), desc[0, -2:]


# ---------------------------------------------------------------------------------------------- descriptor H
def test_centred_disc_bins_and_signs() -> None:
    # disc of radius 20 centred on the image: its boundary pixels lie at distance (19, 20] → all in radius bin 1
    # ([11.31, 22.63)); bin centres at radius 5.66 (bin 0) and 16.97 (bin 1) are inside, 28.28+ (bins ≥ 2) outside.
    hist, pos = _hist(_disc(47.5, 47.5, 20))
    assert torch.equal(hist[:, 0], torch.zeros(U))  # inside, no contour point
    assert hist[:, 1].sum().item() == pytest.approx(1.0, abs=1e-6)  # all M points, none overridden
    assert bool((hist[:, 1] >= 2 / M).all()) and bool((hist[:, 1] <= 10 / M).all())  # ≈ M/U = 5.6 per sector
    assert torch.equal(hist[:, 2:], torch.full((U, V - 2), OUT))
    assert torch.allclose(pos, torch.tensor([0.5, 0.5]))  # centre (47.5 + ½) / 96


def test_shifted_disc_same_histogram_other_position() -> None:
    centred = shape_position_descriptor(_disc(47.5, 47.5, 20)[None, None], U, V, M, OUT)[0]
    shifted = shape_position_descriptor(_disc(30.5, 60.5, 20)[None, None], U, V, M, OUT)[0]
    assert torch.equal(shifted[:-2], centred[:-2])  # integer translation: same polar histogram
    assert torch.allclose(shifted[-2:], torch.tensor([61 / 96, 31 / 96]))  # (x, y) = ((60.5+½)/96, (30.5+½)/96)
    expected_change = (torch.tensor([61 / 96, 31 / 96]) - 0.5).norm() / centred.norm()
    assert descriptor_change(centred, shifted).item() == pytest.approx(expected_change.item(), rel=1e-5)


def test_square_bins_and_overridden_corners() -> None:
    # 36×36 square (rows/cols 30..65) centred at 47.5: 140 boundary pixels, edge pixels at perpendicular
    # distance 17.5. A boundary pixel is in radius bin 1 iff 17.5² + x² < 22.63², i.e. |x| ≤ 13.5: 28 per edge,
    # so 112/140 = 0.8 of the contour lies in bin 1; the rest (corners, up to 24.7 px) falls in bin 2, whose centre
    # (28.28 px, ≥ 20 px along both axes) is outside the square, so those counts are replaced by −1/√d.
    sq = torch.zeros(S, S, dtype=torch.bool)
    sq[30:66, 30:66] = True
    hist, pos = _hist(sq)
    assert torch.equal(hist[:, 0], torch.zeros(U))
    assert hist[:, 1].sum().item() == pytest.approx(0.8, abs=0.02)
    assert bool((hist[:, 1] >= 0).all())  # bin-1 centres (16.97 px) are inside the square in every direction
    assert torch.equal(hist[:, 2:], torch.full((U, V - 2), OUT))
    assert torch.allclose(pos, torch.tensor([0.5, 0.5]))
    # corners missing: sectors around the diagonals (45°, bins 4, 13, 22, 31) hold fewer points than the axes
    diagonal = hist[[4, 13, 22, 31], 1].sum()
    axes = hist[[0, 9, 18, 27], 1].sum()
    assert diagonal < axes
    disc_hist, _ = _hist(_disc(47.5, 47.5, 20))
    assert not torch.equal(disc_hist, hist)


def test_bins_beyond_mask_negative_and_large_objects_fill_outer_bins() -> None:
    # disc radius 35: boundary at (34, 35] → bin 3 ([33.9, 45.3)); centres of bins 0..2 (≤ 28.3 px) inside,
    # bin 3 centre (39.6 px) outside → the contour counts are overridden and no positive count remains.
    hist, _ = _hist(_disc(47.5, 47.5, 35))
    assert torch.equal(hist[:, :3], torch.zeros(U, 3))
    assert torch.equal(hist[:, 3:], torch.full((U, V - 3), OUT))


def test_invariant_to_logit_values_and_frame_duplication() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = _disc(40.5, 50.5, 15), _disc(52.5, 44.5, 18)
    binary = torch.stack([a, b])[None, None]  # [1, 1, 2, h, w]
    ref = shape_position_descriptor(binary)
    logits = torch.where(binary, 0.1 + 5 * torch.rand(binary.shape, generator=g),
                         -0.1 - 5 * torch.rand(binary.shape, generator=g))
    assert torch.equal(shape_position_descriptor(logits), ref)
    assert torch.equal(shape_position_descriptor(binary.float()), ref)  # {0, 1} floats == bool
    assert torch.equal(shape_position_descriptor(logits * 100), ref)
    dup = binary[:, :, [0, 0, 1, 1]]
    with_empty = torch.cat([binary, torch.zeros_like(binary[:, :, :1])], dim=2)
    assert torch.allclose(shape_position_descriptor(dup), ref, atol=1e-7)
    assert torch.allclose(shape_position_descriptor(with_empty), ref, atol=1e-7)
    # the clip descriptor is the mean of the per-frame descriptors
    per_frame = [shape_position_descriptor(binary[:, :, i : i + 1]) for i in range(2)]
    assert torch.allclose(ref, (per_frame[0] + per_frame[1]) / 2, atol=1e-7)
    assert not torch.allclose(per_frame[0], per_frame[1])


def test_empty_mask() -> None:
    desc, valid = frame_descriptors(torch.zeros(1, 20, 30), U, V, M, OUT)
    assert not bool(valid[0])
    assert torch.equal(desc[0, :-2], torch.full((U * V,), OUT)) and torch.equal(desc[0, -2:], torch.zeros(2))
    assert shape_position_descriptor(torch.zeros(2, 0, 3, 20, 30)).shape == (2, 0, U * V + 2)  # no masks
    clip = shape_position_descriptor(torch.zeros(1, 3, 20, 30), U, V, M, OUT)
    assert torch.equal(clip, desc)


def _reference_descriptor(mask: np.ndarray, u: int, v: int, m: int, outside: float) -> np.ndarray:
    """Straightforward per-mask Python version of the documented definition (float64)."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)  # raster order
    if len(ys) == 0:
        return np.concatenate([np.full(u * v, outside), [0.0, 0.0]])
    cx, cy = xs.mean(), ys.mean()

    def inside(i: int, j: int) -> bool:
        return 0 <= i < h and 0 <= j < w and bool(mask[i, j])

    contour = [(i, j) for i, j in zip(ys, xs) if not all(inside(i + di, j + dj)
                                                        for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)))]
    angles = [math.atan2(i - cy, j - cx) for i, j in contour]
    order = sorted(range(len(contour)), key=lambda k: angles[k])  # stable
    ring = math.hypot(h, w) / v
    hist = np.zeros(u * v)
    for k in range(m):
        c = order[k * len(contour) // m]
        i, j = contour[c]
        a = int(math.floor((angles[c] + math.pi) / (2 * math.pi) * u)) % u
        r = min(int(math.hypot(i - cy, j - cx) // ring), v - 1)
        hist[a * v + r] += 1.0 / m
    for a in range(u):
        theta = (a + 0.5) * 2 * math.pi / u - math.pi
        for b in range(v):
            rad = (b + 0.5) * ring
            if not inside(math.floor(cy + rad * math.sin(theta) + 0.5), math.floor(cx + rad * math.cos(theta) + 0.5)):
                hist[a * v + b] = outside
    return np.concatenate([hist, [(cx + 0.5) / w, (cy + 0.5) / h]])


def _random_blobs(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Bool masks [..., h, w]: unions of 1–3 random ellipses and rectangles, some touching the border."""
    g = np.random.default_rng(seed)
    *lead, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros((int(np.prod(lead)), h, w), dtype=bool)
    for n in range(out.shape[0]):
        for _ in range(g.integers(1, 4)):
            cy, cx = g.uniform(-3, h + 3), g.uniform(-3, w + 3)
            ry, rx = g.uniform(2, h / 2), g.uniform(2, w / 2)
            if g.random() < 0.5:
                out[n] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            else:
                out[n] |= (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
    out[1] = False  # one empty mask-frame
    return torch.from_numpy(out.reshape(shape))


def test_batched_descriptor_equals_per_mask_reference() -> None:
    masks = _random_blobs((2, 5, 3, 40, 56), seed=1)
    masks[0, 2] = False  # a mask empty in every frame
    u, v, m, out = 12, 5, 50, -0.1
    got = shape_position_descriptor(masks, u, v, m, out)  # [2, 5, D]
    for b in range(2):
        for n in range(5):
            frames = [_reference_descriptor(masks[b, n, t].numpy(), u, v, m, out) for t in range(3)]
            seen = [t for t in range(3) if masks[b, n, t].any()]
            if seen:
                expected = np.mean([frames[t] for t in seen], axis=0)
            else:
                expected = np.concatenate([np.full(u * v, out), [0.0, 0.0]])
            np.testing.assert_allclose(got[b, n].numpy(), expected, atol=1e-5, err_msg=f"mask ({b}, {n})")


def test_descriptor_has_no_python_loops() -> None:
    for fn in (gvseg_descriptor.frame_descriptors, gvseg_descriptor.shape_position_descriptor,
               gvseg_descriptor.boundary_pixels):
        tree = ast.parse(inspect.getsource(fn))
        loops = [type(n).__name__ for n in ast.walk(tree)
                 if isinstance(n, ast.For | ast.While | ast.ListComp | ast.GeneratorExp | ast.DictComp)]
        assert loops == [], f"{fn.__name__} loops: {loops}"


def test_encoder_shapes_gradients_and_outside_value() -> None:
    torch.manual_seed(0)
    enc = ShapePositionEncoder(64, angle_bins=8, radius_bins=4, num_points=32)
    assert enc.outside_value == pytest.approx(-1 / 8) and enc.descriptor_dim == 8 * 4 + 2
    logits = torch.randn(2, 3, 2, 24, 24, requires_grad=True)
    out = enc(logits)
    assert out.shape == (2, 3, 64)
    out.sum().backward()
    assert logits.grad is None and enc.proj[0].weight.grad is not None
    raw = enc.descriptor(logits)
    assert torch.allclose(out, enc.proj(raw)) and raw.shape == (2, 3, 34)
    with pytest.raises(ValueError, match=r"\[B, n, T, h, w\]"):
        enc(torch.randn(3, 2, 24, 24))


def test_downsampled_masks_keep_majority_pixels_and_feed_encoder() -> None:
    mask = torch.zeros(1, 1, 1, 8, 12, dtype=torch.bool)
    mask[..., 0:2, 0:3] = True  # one full 2×2 block at (0, 0) and half of the block at (0, 1)
    mask[..., 4:8, 6:12] = True
    small = downsample_masks(mask, 6)  # 8×12 → 4×6, 2×2 blocks
    expected = torch.zeros(4, 6, dtype=torch.bool)
    expected[0, 0] = True  # block (0, 1) is only half covered → background
    expected[2:4, 3:6] = True
    assert torch.equal(small[0, 0, 0], expected)
    assert torch.equal(downsample_masks(mask.float() * 4 - 2, 6), small)  # logits binarised first
    assert torch.equal(downsample_masks(mask, 12), mask)
    enc = ShapePositionEncoder(16, angle_bins=6, radius_bins=3, num_points=20, max_mask_size=6)
    assert torch.equal(enc.descriptor(mask), shape_position_descriptor(small, 6, 3, 20, -0.25))


# ---------------------------------------------------------------------------------------------- SPA / association
def test_spa_adders_through_decoder() -> None:
    torch.manual_seed(0)
    d, b, t = 32, 2, 2
    dec = MaskedAttentionDecoder(d, 4, 64, 3, groups=["instance", "background", "semantic"])
    qs = QuerySet([LearnedQueries(d, 5).group("instance"), LearnedQueries(d, 2).group("background"),
                   SemanticQueryBank(d, {"v": 3}).group("v")])
    feats = [torch.randn(b, t, d, 64 // s, 64 // s) for s in (32, 16, 8)]
    mask_feats = torch.randn(b, t, d, 16, 16)
    enc = GvSegConfig(spa=True, angle_bins=8, radius_bins=3, num_points=16).encoder(d)
    seen: list[torch.Tensor] = []
    adders = spa_query_adders(enc, ["instance"])
    wrapped = {"instance": lambda x: (seen.append(x), adders["instance"](x))[1]}
    out = dec(feats, mask_feats, qs, wrapped)
    base = dec(feats, mask_feats, qs)
    assert len(seen) == 3  # once per layer, on that group's previous prediction
    for layer, x in enumerate(seen):
        assert torch.equal(x, out.mask_logits[layer][:, :5])
    assert torch.equal(base.mask_logits[0], out.mask_logits[0])  # initial prediction precedes any adder
    assert not torch.allclose(base.mask_logits[-1], out.mask_logits[-1])
    out.mask_logits[-1].square().mean().backward()
    assert enc.proj[-1].weight.grad is not None and enc.proj[-1].weight.grad.abs().sum() > 0
    assert spa_query_adders(enc, ["instance"], enabled=False) == {}
    with pytest.raises(ValueError, match="semantic"):
        spa_query_adders(enc, ["instance", "semantic"])


def test_association_embedding_and_scores() -> None:
    g = torch.Generator().manual_seed(0)
    q, h = torch.randn(2, 4, 8, generator=g), torch.randn(2, 4, 8, generator=g)
    emb = association_embedding(q, h)
    assert torch.allclose(emb, (q + h) / (q + h).norm(dim=-1, keepdim=True))
    assert torch.allclose(association_embedding(q), q / q.norm(dim=-1, keepdim=True))
    perm = torch.tensor([2, 0, 3, 1])
    other = association_embedding(q[:, perm] + 0.01 * torch.randn(2, 4, 8, generator=g), h[:, perm])
    scores = association_scores(emb, other)
    expected = F.cosine_similarity(emb[:, :, None], other[:, None], dim=-1)
    assert torch.allclose(scores, expected, atol=1e-6)
    assert torch.equal(scores.argmax(-1)[0], torch.argsort(perm))  # each query finds itself
