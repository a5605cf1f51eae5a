"""Bring stride-4 clip logits back to the original frame size (TarViS §9: upsample x4, unpad, resize)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vidseg.data.formats.common import encode_rle
from vidseg.data.records import RLE


def logits_to_original(
    logits: torch.Tensor, padded_hw: tuple[int, int], valid_hw: tuple[int, int], orig_hw: tuple[int, int]
) -> torch.Tensor:
    """[K, T, h4, w4] logits -> [K, T, H, W] logits at the original size (bilinear x4, crop padding, resize)."""
    k, t = logits.shape[:2]
    x = logits.reshape(k * t, 1, *logits.shape[-2:]).float()
    x = F.interpolate(x, size=padded_hw, mode="bilinear", align_corners=False)
    x = x[..., : valid_hw[0], : valid_hw[1]]
    if tuple(valid_hw) != tuple(orig_hw):
        x = F.interpolate(x, size=orig_hw, mode="bilinear", align_corners=False)
    return x.reshape(k, t, *orig_hw)


def class_maps_to_original(
    logits: torch.Tensor, padded_hw: tuple[int, int], valid_hw: tuple[int, int], orig_hw: tuple[int, int]
) -> torch.Tensor:
    """[C, T, h4, w4] class-mask logits -> int64 argmax maps [T, H, W] at the original size."""
    return logits_to_original(logits, padded_hw, valid_hw, orig_hw).argmax(0)


def masks_to_rles(masks: torch.Tensor) -> list[RLE | None]:
    """bool [T, H, W] -> one compressed RLE per frame, None where the mask is empty (the YTVIS convention)."""
    arr = masks.cpu().numpy().astype(np.uint8)
    return [encode_rle(m) if m.any() else None for m in arr]
