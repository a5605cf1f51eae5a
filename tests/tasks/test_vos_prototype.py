"""The VOS/PET auxiliary prototype loss: per-pixel softmax CE over the frame's GT-region prototypes."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vidseg.tasks.vos import prototype_loss


def _regions(t: int = 2, size: int = 16) -> torch.Tensor:
    """Background + 2 objects on a size x size grid for t frames: [1*(1+2), T, H, W] (background first)."""
    objs = torch.zeros(2, t, size, size)
    objs[0, :, 2:8, 2:8] = 1
    objs[1, :, 9:14, 9:15] = 1
    bg = 1 - objs.amax(0, keepdim=True)
    return torch.cat([bg, objs])


def test_discriminative_features_give_near_zero_loss_and_random_ones_do_not() -> None:
    target = _regions()
    d = 8
    onehot = F.pad(target.transpose(0, 1), (0, 0, 0, 0, 0, d - 3))  # [T, d, H, W]: channel k = region k
    good = (20.0 * onehot)[None]  # [1, T, d, H, W]
    assert prototype_loss(good, target, n=2).item() < 1e-3
    constant = torch.ones(1, 2, d, 16, 16)  # every pixel identical: uniform over the 3 regions
    assert math.isclose(prototype_loss(constant, target, n=2).item(), math.log(3), rel_tol=1e-5)


def test_loss_equals_an_explicit_per_pixel_reference() -> None:
    torch.manual_seed(0)
    target = _regions(t=1)
    feats = torch.randn(1, 1, 4, 16, 16)
    protos = [(feats[0, 0] * target[k, 0]).sum((1, 2)) / target[k, 0].sum() for k in range(3)]
    total, count = 0.0, 0
    for y in range(16):
        for x in range(16):
            label = int(target[:, 0, y, x].argmax())
            logits = torch.stack([(p * feats[0, 0, :, y, x]).sum() / 2.0 for p in protos])
            total += float(-torch.log_softmax(logits, 0)[label])
            count += 1
    assert math.isclose(prototype_loss(feats, target, n=2).item(), total / count, rel_tol=1e-5)


def test_absent_region_is_no_candidate_and_gradients_reach_the_features() -> None:
    target = _regions(t=2)
    target[2, 1] = 0  # object 2 absent in frame 1
    target[0, 1] = 1 - target[1, 1]
    feats = torch.randn(1, 2, 4, 16, 16, requires_grad=True)
    loss = prototype_loss(feats, target, n=2)
    assert torch.isfinite(loss)
    loss.backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
