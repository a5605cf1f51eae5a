"""Sine positional encodings (DETR / Mask2Former style), 2D (y, x) and 3D (t, y, x).

Coordinates are pixel-centre cumulative counts normalised to (0, 2*pi] (``normalize=True``, scale 2*pi).
Inputs are padded images without a mask (TarViS), so encodings depend only on the shape; the functional
forms below take sizes and the module forms take a feature map, like Mask2Former's.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

_EPS = 1e-6


def _axis_coords(size: int, normalize: bool, scale: float, device: torch.device) -> Tensor:
    coords = torch.arange(1, size + 1, dtype=torch.float32, device=device)  # == cumsum of a not-mask
    if normalize:
        coords = coords / (size + _EPS) * scale
    return coords


def _sine_features(coords: Tensor, num_feats: int, temperature: float) -> Tensor:
    """coords [...] -> [..., num_feats] interleaved (sin, cos) at geometric frequencies."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=coords.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    phases = coords[..., None] / dim_t
    return torch.stack((phases[..., 0::2].sin(), phases[..., 1::2].cos()), dim=-1).flatten(-2)


def sine_position_2d(
    height: int,
    width: int,
    channels: int = 256,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    temperature: float = 10000.0,
    normalize: bool = True,
    scale: float = 2 * math.pi,
) -> Tensor:
    """2D sine encoding [1, channels, H, W]: first half encodes y, second half x (Mask2Former order)."""
    if channels % 2:
        raise ValueError(f"sine_position_2d needs an even channel count, got {channels}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    num_feats = channels // 2
    pos_y = _sine_features(_axis_coords(height, normalize, scale, device), num_feats, temperature)  # [H, F]
    pos_x = _sine_features(_axis_coords(width, normalize, scale, device), num_feats, temperature)  # [W, F]
    pos = torch.cat([pos_y[:, None, :].expand(height, width, num_feats),
                     pos_x[None, :, :].expand(height, width, num_feats)], dim=-1)
    return pos.permute(2, 0, 1).unsqueeze(0).to(dtype).contiguous()


def sine_position_3d(
    frames: int,
    height: int,
    width: int,
    channels: int = 256,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    temperature: float = 10000.0,
    normalize: bool = True,
    scale: float = 2 * math.pi,
    channels_last: bool = False,
) -> Tensor:
    """3D sine encoding = cat(y, x) encoding + a full-width t encoding (TarViS/VITA).

    Returns [1, T, channels, H, W], or [T, H, W, channels] with ``channels_last=True`` (token layout).
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    num_feats = channels // 2
    if channels % 2:
        raise ValueError(f"sine_position_3d needs an even channel count, got {channels}")
    pos_y = _sine_features(_axis_coords(height, normalize, scale, device), num_feats, temperature)  # [H, F]
    pos_x = _sine_features(_axis_coords(width, normalize, scale, device), num_feats, temperature)  # [W, F]
    pos_t = _sine_features(_axis_coords(frames, normalize, scale, device), channels, temperature)  # [T, C]
    spatial = torch.cat([pos_y[:, None, :].expand(height, width, num_feats),
                         pos_x[None, :, :].expand(height, width, num_feats)], dim=-1)  # [H, W, C]
    pos = spatial[None] + pos_t[:, None, None, :]  # [T, H, W, C]
    if not channels_last:
        pos = pos.permute(0, 3, 1, 2).unsqueeze(0)
    return pos.to(dtype).contiguous()


class PositionEmbeddingSine(nn.Module):
    """Module form: x [B, C_any, H, W] -> [B, 2*num_pos_feats, H, W] (no parameters)."""

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, normalize: bool = True,
                 scale: float = 2 * math.pi) -> None:
        super().__init__()
        self.num_pos_feats, self.temperature, self.normalize, self.scale = num_pos_feats, temperature, \
            normalize, scale

    def forward(self, x: Tensor) -> Tensor:
        pos = sine_position_2d(x.shape[-2], x.shape[-1], 2 * self.num_pos_feats, device=x.device,
                               dtype=x.dtype, temperature=self.temperature, normalize=self.normalize,
                               scale=self.scale)
        return pos.expand(x.shape[0], -1, -1, -1)


class PositionEmbeddingSine3D(nn.Module):
    """Module form: x [B, T, C_any, H, W] -> [B, T, 2*num_pos_feats, H, W] (no parameters)."""

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, normalize: bool = True,
                 scale: float = 2 * math.pi) -> None:
        super().__init__()
        self.num_pos_feats, self.temperature, self.normalize, self.scale = num_pos_feats, temperature, \
            normalize, scale

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5:
            raise ValueError(f"PositionEmbeddingSine3D expects [B, T, C, H, W], got {tuple(x.shape)}")
        pos = sine_position_3d(x.shape[1], x.shape[-2], x.shape[-1], 2 * self.num_pos_feats, device=x.device,
                               dtype=x.dtype, temperature=self.temperature, normalize=self.normalize,
                               scale=self.scale)
        return pos.expand(x.shape[0], -1, -1, -1, -1)
