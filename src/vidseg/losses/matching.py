"""Video-level Hungarian matching (TarViS / Mask2Former) with batched cost matrices.

Cost = w_class * (-p(gt class)) + w_bce * sigmoid BCE + w_dice * dice, masks compared on the same
uniformly random points for every mask and every frame (frames are channels). All cost matrices of a
batch are computed at once as tensors; only `linear_sum_assignment` runs per sample on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from vidseg.model.ops import point_sample


@dataclass
class MatchTargets:
    """Targets of one batch, padded: class ids [B, N] (-1 pad), masks [B, N, T, H, W], counts [B]."""

    class_ids: torch.Tensor
    masks: torch.Tensor
    counts: list[int]

    @staticmethod
    def pad(class_ids: list[torch.Tensor], masks: list[torch.Tensor]) -> MatchTargets:
        counts = [int(m.shape[0]) for m in masks]
        n = max(counts + [1])
        ref = masks[0]
        t, h, w = ref.shape[1:]
        padded = ref.new_zeros((len(masks), n, t, h, w))
        cls = torch.full((len(masks), n), -1, dtype=torch.long, device=ref.device)
        for i, (c, m) in enumerate(zip(class_ids, masks)):
            padded[i, : m.shape[0]] = m
            cls[i, : c.shape[0]] = c
        return MatchTargets(cls, padded, counts)


def batch_bce_cost(pred: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """pred logits [B, Q, P], tgt [B, N, P] -> mean BCE cost [B, Q, N] via two matmuls."""
    p = pred.shape[-1]
    # BCE(x, t) = softplus(x) - x t, so sum_p BCE = rowsum(softplus(x)) - x @ t^T: one transcendental pass
    return (F.softplus(pred).sum(-1, keepdim=True) - torch.bmm(pred, tgt.transpose(1, 2))) / p


def batch_dice_cost(pred: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """pred logits [B, Q, P], tgt [B, N, P] -> dice cost [B, Q, N]."""
    probs = pred.sigmoid()
    numerator = 2 * torch.bmm(probs, tgt.transpose(1, 2))
    denominator = probs.sum(-1)[:, :, None] + tgt.sum(-1)[:, None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher:
    """Video-level matcher. `__call__` returns, per sample, (query indices, target indices) int64 tensors."""

    def __init__(
        self, cost_class: float = 2.0, cost_bce: float = 5.0, cost_dice: float = 5.0, num_points: int = 12544
    ) -> None:
        self.cost_class = cost_class
        self.cost_bce = cost_bce
        self.cost_dice = cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def cost_matrices(
        self,
        class_logits: torch.Tensor | None,
        mask_logits: torch.Tensor,
        targets: MatchTargets,
        generator: torch.Generator | None = None,
        coords: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Cost [B, Q, N] for class logits [B, Q, 1+C] (index 0 = no-object) and masks [B, Q, T, h, w].
        `coords` [B, P, 2] in [0, 1] overrides the uniformly drawn points (tests, benchmarks)."""
        b, q, t = mask_logits.shape[:3]
        n = targets.masks.shape[1]
        if coords is None:
            coords = torch.rand(b, self.num_points, 2, device=mask_logits.device, generator=generator)
        p = coords.shape[1]
        pred = point_sample(mask_logits.float().flatten(1, 2), coords)  # [B, Q*T, P]
        pred = pred.reshape(b, q, t * p)
        tgt = point_sample(targets.masks.float().flatten(1, 2), coords)  # [B, N*T, P]
        tgt = tgt.reshape(b, n, t * p)
        cost = self.cost_bce * batch_bce_cost(pred, tgt) + self.cost_dice * batch_dice_cost(pred, tgt)
        if class_logits is not None and self.cost_class:
            probs = class_logits.float().softmax(-1)  # [B, Q, 1+C]
            idx = (targets.class_ids.clamp(min=0) + 1).unsqueeze(1).expand(b, q, n)
            cost = cost - self.cost_class * probs.gather(2, idx)
        return cost

    @torch.no_grad()
    def __call__(
        self,
        class_logits: torch.Tensor | None,
        mask_logits: torch.Tensor,
        targets: MatchTargets,
        generator: torch.Generator | None = None,
        coords: torch.Tensor | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        cost = self.cost_matrices(class_logits, mask_logits, targets, generator, coords).cpu().numpy()
        out = []
        for i, n in enumerate(targets.counts):
            rows, cols = linear_sum_assignment(cost[i, :, :n]) if n else (np.zeros(0), np.zeros(0))
            out.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
        return out


@torch.no_grad()
def reference_match(
    class_logits: torch.Tensor | None,
    mask_logits: torch.Tensor,
    class_ids: list[torch.Tensor],
    masks: list[torch.Tensor],
    coords: torch.Tensor,
    cost_class: float = 2.0,
    cost_bce: float = 5.0,
    cost_dice: float = 5.0,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Straightforward per-sample, per-pair reference of the matcher (tests and `scripts/bench_matcher.py`).

    Returns per sample (query indices, target indices, cost matrix [Q, N])."""
    out = []
    for b in range(mask_logits.shape[0]):
        q, t = mask_logits.shape[1:3]
        n = masks[b].shape[0]
        c = coords[b : b + 1]
        pred = point_sample(mask_logits[b].float(), c.expand(q, -1, -1)).flatten(1)  # [Q, T*P]
        tgt = point_sample(masks[b].float(), c.expand(n, -1, -1)).flatten(1) if n else pred[:0]
        cost = torch.zeros(q, n)
        probs = class_logits[b].float().softmax(-1) if class_logits is not None else None
        for i in range(q):
            for j in range(n):
                bce = F.binary_cross_entropy_with_logits(pred[i], tgt[j], reduction="mean")
                s = pred[i].sigmoid()
                dice = 1 - (2 * (s * tgt[j]).sum() + 1) / (s.sum() + tgt[j].sum() + 1)
                cost[i, j] = cost_bce * bce + cost_dice * dice
                if probs is not None and cost_class:
                    cost[i, j] -= cost_class * probs[i, int(class_ids[b][j]) + 1]
        rows, cols = linear_sum_assignment(cost.numpy()) if n else (np.zeros(0), np.zeros(0))
        out.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long), cost))
    return out
