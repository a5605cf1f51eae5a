"""Mask losses: near zero for perfect logits, increasing with corruption, ignore handled."""

from __future__ import annotations

import torch

from vidseg.data.records import IGNORE_LABEL
from vidseg.losses.masks import mask_losses, semantic_ce_loss


def _masks(seed: int = 0, m: int = 3, t: int = 2, h: int = 24, w: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.zeros(m, t, h, w, dtype=torch.bool)
    for i in range(m):
        y, x = torch.randint(0, h - 8, (2,), generator=g).tolist()
        base[i, :, y : y + 8, x : x + 8] = True
    return base


def test_mask_losses_perfect_is_near_zero_and_corruption_increases() -> None:
    gt = _masks()
    perfect = gt.float() * 40 - 20
    values = []
    for flip in (0.0, 0.1, 0.3):
        g = torch.Generator().manual_seed(1)
        noise = torch.rand(gt.shape, generator=g) < flip
        logits = torch.where(noise, -perfect, perfect)
        values.append({k: float(v) for k, v in mask_losses(logits, gt, 3, num_points=None).items()})
    assert values[0]["bce"] < 1e-6 and values[0]["dice"] < 1e-3
    assert values[0]["bce"] < values[1]["bce"] < values[2]["bce"]
    assert values[0]["dice"] < values[1]["dice"] < values[2]["dice"]


def test_mask_losses_sampled_points_rank_perfect_below_shifted() -> None:
    # importance sampling concentrates on boundaries, where bilinear sampling of a perfect mask is fractional,
    # so the sampled loss of a perfect prediction is small but not zero; a shifted one must cost far more
    gt = _masks(2)
    perfect = gt.float() * 40 - 20
    shifted = perfect.roll(4, dims=-1)
    torch.manual_seed(0)
    good = mask_losses(perfect, gt, 3, num_points=500)
    bad = mask_losses(shifted, gt, 3, num_points=500)
    assert float(good["bce"]) * 5 < float(bad["bce"])
    assert float(good["dice"]) * 2 < float(bad["dice"])


def test_semantic_ce_perfect_and_ignore() -> None:
    t, h, w, c = 2, 16, 16, 4
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, c, (t, h, w), generator=g)
    logits = torch.nn.functional.one_hot(target, c).permute(3, 0, 1, 2).float() * 30
    assert float(semantic_ce_loss(logits, target, num_points=None)) < 1e-6
    # wrong predictions only inside the ignored region do not count
    ignored = target.clone()
    ignored[:, :8] = IGNORE_LABEL
    bad = logits.clone()
    bad[:, :, :8] = bad[:, :, :8].roll(1, dims=0)
    assert float(semantic_ce_loss(bad, ignored, num_points=None)) < 1e-6
    assert float(semantic_ce_loss(bad, target, num_points=None)) > 1.0
    # sampled points: bilinear interpolation blurs labels at pixel borders, so compare, don't expect zero
    torch.manual_seed(0)
    with_ignore = float(semantic_ce_loss(bad, ignored, num_points=400))
    without = float(semantic_ce_loss(bad, target, num_points=400))
    assert with_ignore * 3 < without
