"""Mask losses on sampled points (Mask2Former / TarViS): sigmoid BCE, dice, and softmax CE for semantic maps.

Video masks are [M, T, h, w] logits (one mask per target per clip); losses treat every (target, frame) pair
as one mask and are normalised by (number of targets x T), as in TarViS. `num_points=None` evaluates every
logit pixel (the GT is sampled at the logit pixel centres): cheaper than 12,544 points at the tiny CPU sizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vidseg.data.records import IGNORE_LABEL
from vidseg.model.ops import point_sample, uncertain_point_coords


def sigmoid_bce(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Mean BCE over points, summed over masks, divided by `num_masks`. logits/targets [M, P]."""
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """1 - (2|p t| + 1) / (|p| + |t| + 1), summed over masks, divided by `num_masks`. logits/targets [M, P]."""
    probs = logits.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def _uncertainty_binary(logits: torch.Tensor) -> torch.Tensor:
    return -torch.abs(logits)


def _pixel_centres(h: int, w: int, device: torch.device) -> torch.Tensor:
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)  # [h*w, 2] as (x, y)


def _nearest_labels(labels: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """labels [K, H, W] int, coords [K, P, 2] (x, y) in [0, 1] -> labels at the nearest pixels [K, P]."""
    k, hh, ww = labels.shape
    xs = (coords[..., 0] * ww).long().clamp_(0, ww - 1)
    ys = (coords[..., 1] * hh).long().clamp_(0, hh - 1)
    return labels.reshape(k, hh * ww).gather(1, ys * ww + xs)


def sample_mask_points(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_points: int | None,
    oversample_ratio: float = 3.0,
    importance_ratio: float = 0.75,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-mask point samples of prediction and target. pred [K, h, w] logits, target [K, H, W] in {0,1}.

    Returns (pred_points, target_points), each [K, P]. Points are importance-sampled on the prediction's
    uncertainty (PointRend) or, with num_points=None, every prediction pixel centre.
    """
    k, h, w = pred.shape
    if k == 0:
        return pred.new_zeros(0, 0), pred.new_zeros(0, 0)
    with torch.no_grad():
        if num_points is None:
            coords = _pixel_centres(h, w, pred.device).unsqueeze(0).expand(k, -1, -1)
        else:
            coords = uncertain_point_coords(
                pred.unsqueeze(1).float(), _uncertainty_binary, num_points, oversample_ratio, importance_ratio
            )
        tgt = point_sample(target.unsqueeze(1).to(pred.dtype), coords).squeeze(1)
    if num_points is None:
        prd = pred.reshape(k, h * w)
    else:
        prd = point_sample(pred.unsqueeze(1), coords).squeeze(1)
    return prd, tgt


def mask_losses(
    pred_masks: torch.Tensor,
    target_masks: torch.Tensor,
    num_masks: float,
    num_points: int | None = 12544,
    oversample_ratio: float = 3.0,
    importance_ratio: float = 0.75,
) -> dict[str, torch.Tensor]:
    """BCE and dice between matched video masks. pred [M, T, h, w] logits, target [M, T, H, W] bool/float.

    `num_masks` is the number of targets (averaged across ranks by the caller); each frame counts as a mask,
    so the sum is divided by num_masks * T.
    """
    m, t = pred_masks.shape[:2]
    if m == 0:
        zero = pred_masks.sum() * 0.0
        return {"bce": zero, "dice": zero}
    prd, tgt = sample_mask_points(
        pred_masks.flatten(0, 1), target_masks.flatten(0, 1), num_points, oversample_ratio, importance_ratio
    )
    denom = max(float(num_masks), 1.0) * t
    return {"bce": sigmoid_bce(prd, tgt, denom), "dice": dice(prd, tgt, denom)}


def semantic_ce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    num_points: int | None = 12544,
    oversample_ratio: float = 3.0,
    importance_ratio: float = 0.75,
    class_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax CE of class-mask logits against a semantic map with IGNORE_LABEL.

    logits [C, T, h, w] (one mask per class per clip), target [T, H, W] int64 class index or IGNORE_LABEL.
    Points are importance-sampled per frame on the top-2 logit gap; ignored pixels are treated as least
    uncertain (TarViS), then excluded from the loss.
    """
    c, t, h, w = logits.shape
    frames = logits.permute(1, 0, 2, 3)  # [T, C, h, w]
    with torch.no_grad():
        if num_points is None:
            coords = _pixel_centres(h, w, logits.device).unsqueeze(0).expand(t, -1, -1)
        else:
            valid_small = F.interpolate(
                (target != IGNORE_LABEL).unsqueeze(1).float(), size=(h, w), mode="nearest"
            )

            def gap_uncertainty(x: torch.Tensor) -> torch.Tensor:
                # x is the 1-channel map passed below: uncertainty precomputed into channel 0
                return x

            top2 = frames.float().topk(min(2, c), dim=1).values
            gap = -(top2[:, 0] - top2[:, -1]) if c > 1 else -top2[:, 0].abs()
            unc = torch.where(valid_small[:, 0] > 0, gap, torch.full_like(gap, -1e4)).unsqueeze(1)
            coords = uncertain_point_coords(unc, gap_uncertainty, num_points, oversample_ratio, importance_ratio)
        tgt = _nearest_labels(target, coords)  # [T, P]
    if num_points is None:
        prd = frames.reshape(t, c, h * w)
    else:
        prd = point_sample(frames, coords)  # [T, C, P]
    return F.cross_entropy(prd, tgt, weight=class_weight, ignore_index=IGNORE_LABEL)
