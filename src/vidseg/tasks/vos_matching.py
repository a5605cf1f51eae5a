"""Matching readout for VOS (ours, after STM / XMem; not in TarViS): every pixel of the clip attends to the pixels
of its objects' reference frame, and reads out which object (or the background) it looked like there.

Keys are a learned projection of the mask features; the memory is the reference frame on the prompt-token grid
(`token_pool`), the queries are every clip pixel on the mask grid. The readout p (a distribution over background
and the objects prompted on that frame) enters the object logits as `gain * logit(p)`, so the decoder's queries
and the matching correct each other, and the keys learn from the mask loss through it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MatchingReadout(nn.Module):
    """Per-pixel attention to a reference frame -> additive logits [1 + N, T, h, w] (background first)."""

    def __init__(self, d_model: int, key_dim: int = 32, gain: float = 0.5, clamp: float = 0.01) -> None:
        super().__init__()
        if key_dim < 1:
            raise ValueError(f"MatchingReadout: key_dim (tasks.<task>.matching_dim) must be >= 1, got {key_dim}")
        if not 0.0 < clamp < 0.5:
            raise ValueError(f"MatchingReadout: clamp must be in (0, 0.5), got {clamp}")
        self.key = nn.Linear(d_model, key_dim)
        self.gain = nn.Parameter(torch.tensor(float(gain)))
        self.clamp = float(clamp)

    def forward(self, feats: Tensor, memory: Tensor, ref_masks: Tensor, ref_frames: Tensor,
                is_point: list[bool]) -> Tensor:
        """feats [T, d, h, w]: the clip's mask features (queries); memory [T, d, hm, wm]: the same on the token
        grid; ref_masks [N, hm, wm] float in [0, 1]: each object's mask on its reference frame on that grid;
        ref_frames [N]: clip-frame indices; is_point [N]: point objects (no mask) get zero logits.
        Background: read from the earliest reference frame (its pixels outside every mask prompted there)."""
        t, _, h, w = feats.shape
        n = ref_masks.shape[0]
        queries = self.key(feats.permute(0, 2, 3, 1).reshape(t * h * w, -1))  # [T*h*w, k]
        out = feats.new_zeros((1 + n, t * h * w))
        mask_objs = [k for k in range(n) if not is_point[k]]
        if not mask_objs:
            return out.view(1 + n, t, h, w)
        ref = ref_frames.tolist()
        frames = sorted({ref[k] for k in mask_objs})
        for r in frames:
            objs = [k for k in mask_objs if ref[k] == r]
            keys = self.key(memory[r].flatten(1).t())  # [P, k]
            attn = torch.softmax(queries @ keys.t() / keys.shape[-1] ** 0.5, dim=-1)  # [T*h*w, P]
            values = ref_masks[objs].flatten(1).t()  # [P, n_r]
            background = (1 - values.sum(1, keepdim=True)).clamp(min=0)
            read = attn @ torch.cat([background, values], 1)  # [T*h*w, 1 + n_r]
            logit = torch.logit(read.clamp(self.clamp, 1 - self.clamp))
            out[[1 + k for k in objs]] = logit[:, 1:].t()
            if r == frames[0]:
                out[0] = logit[:, 0]
        return (self.gain * out).view(1 + n, t, h, w)


def pooled_masks(masks: Tensor, pool: int) -> Tensor:
    """Bool masks [N, h, w] on the mask grid -> float area fractions [N, h/pool, w/pool] on the token grid."""
    if pool == 1:
        return masks.float()
    return F.avg_pool2d(masks[:, None].float(), pool, ceil_mode=True)[:, 0]
