"""Tensor ops of the model core: multi-scale deformable attention (pure PyTorch over ``grid_sample``),
PointRend point sampling, and reshape-based (space-time) window partitioning.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Tensor | list[tuple[int, int]],
    level_start_index: Tensor | list[int] | None,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention core (Deformable-DETR formulation).

    Args:
        value: [N, S, M, D], the flattened levels concatenated along S (S = sum H_l*W_l), M heads.
        spatial_shapes: [L, 2] (H_l, W_l) per level (tensor or list).
        level_start_index: [L] offset of each level in S (derived from ``spatial_shapes`` when None).
        sampling_locations: [N, Q, M, L, P, 2] normalised (x, y) in [0, 1]; 0 and 1 are the outer pixel edges.
        attention_weights: [N, Q, M, L, P], already normalised over (L, P).

    Returns:
        [N, Q, M*D]: per head, the weighted sum of bilinear samples (zero outside the map).
    """
    n, s, heads, head_dim = value.shape
    _, q, _, levels, points, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in (spatial_shapes.tolist() if torch.is_tensor(spatial_shapes)
                                             else spatial_shapes)]
    if len(shapes) != levels:
        raise ValueError(f"ms_deform_attn: {len(shapes)} spatial shapes but {levels} levels in "
                         "sampling_locations")
    if sum(h * w for h, w in shapes) != s:
        raise ValueError(f"ms_deform_attn: spatial shapes {shapes} sum to {sum(h * w for h, w in shapes)}, "
                         f"value has S={s}")
    if level_start_index is None:
        starts = [0]
        for h, w in shapes[:-1]:
            starts.append(starts[-1] + h * w)
    else:
        starts = [int(i) for i in (level_start_index.tolist() if torch.is_tensor(level_start_index)
                                   else level_start_index)]
    # grid_sample wants [-1, 1] coordinates; heads fold into the batch dimension.
    grids = (2.0 * sampling_locations - 1.0).transpose(1, 2).reshape(n * heads, q, levels, points, 2)
    weights = attention_weights.transpose(1, 2).reshape(n * heads, 1, q, levels, points)
    out = None
    for level, ((h, w), start) in enumerate(zip(shapes, starts)):
        value_l = value[:, start:start + h * w].permute(0, 2, 3, 1).reshape(n * heads, head_dim, h, w)
        sampled = F.grid_sample(value_l, grids[:, :, level], mode="bilinear", padding_mode="zeros",
                                align_corners=False)  # [N*M, D, Q, P]
        # accumulate level by level: no stacked [N*M, D, Q, L*P] copy
        term = (sampled * weights[..., level, :]).sum(-1)  # [N*M, D, Q]
        out = term if out is None else out + term
    return out.view(n, heads * head_dim, q).transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module (Deformable-DETR), pure PyTorch.

    Offsets, weights and the sampling itself run in fp32 even under autocast (as TarViS does), because
    bf16 sampling positions are off by a sizeable fraction of a pixel on the finer maps.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 3, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"MSDeformAttn: d_model={d_model} is not divisible by n_heads={n_heads}")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Standard init: zero offset weights, offsets' bias points each head in its own direction at growing
        radii per point; uniform attention; Xavier value/output projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        radii = torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        bias = directions.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1) * radii
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        spatial_shapes: Tensor | list[tuple[int, int]],
        level_start_index: Tensor | list[int] | None = None,
        input_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """query [N, Q, C]; reference_points [N or 1, Q, L, 2] (x, y) in [0, 1]; input_flatten [N, S, C];
        spatial_shapes [L, 2] (H, W); input_padding_mask [N, S] True = padding. Returns [N, Q, C]."""
        n, q, _ = query.shape
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(n, -1, self.n_heads, self.d_model // self.n_heads)
        with torch.autocast(device_type=query.device.type, enabled=False):
            query32 = query.float()
            offsets = self.sampling_offsets(query32).view(n, q, self.n_heads, self.n_levels, self.n_points, 2)
            weights = self.attention_weights(query32).view(n, q, self.n_heads, self.n_levels * self.n_points)
            weights = weights.softmax(-1).view(n, q, self.n_heads, self.n_levels, self.n_points)
            # offsets are in pixels of each level: divide by (W_l, H_l)
            if torch.is_tensor(spatial_shapes):
                normalizer = spatial_shapes.flip(-1).to(device=query.device, dtype=torch.float32)
            else:  # a Python list avoids a device sync in ms_deform_attn
                normalizer = torch.tensor([(w, h) for h, w in spatial_shapes], dtype=torch.float32,
                                          device=query.device)
            locations = (reference_points.float()[:, :, None, :, None, :]
                         + offsets / normalizer[None, None, None, :, None, :])
            out = ms_deform_attn(value.float(), spatial_shapes, level_start_index, locations, weights)
        return self.output_proj(out.to(value.dtype))


def point_sample(input: Tensor, coords: Tensor, **grid_sample_kwargs) -> Tensor:
    """Sample ``input`` [N, C, H, W] at ``coords`` [N, P, 2] or [N, Hg, Wg, 2], normalised (x, y) in [0, 1]
    (0 and 1 are the outer pixel edges). Returns [N, C, P] or [N, C, Hg, Wg]. Bilinear, zero padding."""
    squeeze = coords.dim() == 3
    grid = coords.unsqueeze(2) if squeeze else coords
    grid_sample_kwargs.setdefault("align_corners", False)
    out = F.grid_sample(input, 2.0 * grid - 1.0, **grid_sample_kwargs)
    return out.squeeze(3) if squeeze else out


def uncertain_point_coords(
    logits: Tensor,
    uncertainty_fn: Callable[[Tensor], Tensor],
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_ratio: float = 0.75,
    generator: torch.Generator | None = None,
) -> Tensor:
    """PointRend importance sampling: coordinates [N, num_points, 2] in [0, 1] of the most uncertain points.

    ``num_points * oversample_ratio`` random points are scored by ``uncertainty_fn`` (maps sampled logits
    [N, C, P] to [N, 1, P], higher = more uncertain, e.g. ``-|logit|``); the ``importance_ratio`` share of
    the most uncertain ones is kept and the rest are fresh uniform points. Batched over N.
    """
    if not (oversample_ratio >= 1.0 and 0.0 <= importance_ratio <= 1.0):
        raise ValueError(f"need oversample_ratio >= 1 and importance_ratio in [0, 1], got "
                         f"{oversample_ratio}, {importance_ratio}")
    n = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_ratio * num_points)
    num_random = num_points - num_uncertain
    opts = dict(device=logits.device, dtype=logits.dtype if logits.is_floating_point() else torch.float32)
    coords = torch.rand(n, num_sampled, 2, generator=generator, **opts)
    uncertainty = uncertainty_fn(point_sample(logits, coords))  # [N, 1, num_sampled]
    if uncertainty.shape != (n, 1, num_sampled):
        raise ValueError(f"uncertainty_fn must return [N, 1, P] = {(n, 1, num_sampled)}, "
                         f"got {tuple(uncertainty.shape)}")
    top = torch.topk(uncertainty[:, 0, :], k=num_uncertain, dim=1).indices  # [N, k]
    picked = torch.gather(coords, 1, top[..., None].expand(-1, -1, 2))
    if num_random > 0:
        picked = torch.cat([picked, torch.rand(n, num_random, 2, generator=generator, **opts)], dim=1)
    return picked


def window_partition(x: Tensor, window: int) -> Tensor:
    """Cut [B, T, H, W, C] into non-overlapping window x window space-time windows.

    Returns [B * (H/window) * (W/window), T * window * window, C], windows in raster order per batch item,
    tokens ordered (t, y, x) inside a window. Pure reshape/permute (one copy, no index tensors).
    """
    b, t, h, w, c = x.shape
    if h % window or w % window:
        raise ValueError(f"window_partition: map {h}x{w} is not divisible by window {window}")
    nh, nw = h // window, w // window
    x = x.view(b, t, nh, window, nw, window, c).permute(0, 2, 4, 1, 3, 5, 6)
    return x.reshape(b * nh * nw, t * window * window, c)


def window_merge(windows: Tensor, window: int, batch: int, frames: int, height: int, width: int) -> Tensor:
    """Inverse of :func:`window_partition`: [B*nh*nw, T*window*window, C] -> [B, T, H, W, C]."""
    nh, nw = height // window, width // window
    c = windows.shape[-1]
    expected = (batch * nh * nw, frames * window * window)
    if tuple(windows.shape[:2]) != expected:
        raise ValueError(f"window_merge: got windows {tuple(windows.shape)}, "
                         f"expected leading dims {expected}")
    x = windows.view(batch, nh, nw, frames, window, window, c).permute(0, 3, 1, 4, 2, 5, 6)
    return x.reshape(batch, frames, height, width, c)
