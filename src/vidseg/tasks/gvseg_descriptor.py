"""GvSeg shape-position descriptor H (Shape-Context-like polar histogram of contour points), vectorised.

Definition used by vidseg (``/work/shared/reference/gvseg.md`` §3; everything the summary leaves open is our
choice, marked *ours*):

- foreground: ``masks > 0`` — mask logits thresholded at 0 (sigmoid ≥ 0.5 is ``>= 0``; we use ``> 0`` so
  that binary {0, 1} float masks and bool masks mean the same thing as logits).
- contour: mask pixels with at least one 4-neighbour outside the mask; the image border counts as outside.
- centre: centre of mass of the mask pixels, pixel (row i, col j) at (x=j, y=i).
- M contour points (default 200), sampled evenly *by angle rank*: boundary pixels are sorted by their polar
  angle around the centre (stable sort) and the k-th point is the ⌊k·K/M⌋-th of the K sorted pixels
  (*ours*; exact contour order for star-shaped masks; points repeat when K < M).
- polar bins: u angle bins (default 36) over [−π, π) with θ = atan2(y − cy, x − cx) (y down), and v radius
  bins (default 12) of equal width over [0, max_radius · image diagonal) (*ours*: the diagonal keeps the
  absolute object scale, unlike Shape Context's mean-distance normalisation); a point beyond the last bin
  counts in the last bin. Bin (a, b) is entry a·v + b.
- histogram value = fraction of the M points in the bin (counts / M, *ours*: independent of M);
  every bin whose centre (angle (a + ½)·2π/u − π, radius (b + ½)·width, looked up at the nearest pixel)
  lies outside the mask — including off the image — is set to ``outside_value`` (GvSeg: −1/√d_model),
  even if points fall in it (as the summary states).
- position (*ours*): the histogram alone is translation invariant (bins off the image are "outside" too),
  so the descriptor appends the centre ((cx + ½)/w, (cy + ½)/h) ∈ (0, 1)²: the same shape at another place
  gives the same histogram and a different position part, and ΔH (contrastive sampling) sees both.
- empty mask: every bin is outside → histogram all ``outside_value``, position (0, 0), flagged invalid.
- time (*ours*): H of a [.., T, h, w] mask = mean of the per-frame descriptors over the frames where the mask
  is non-empty (so duplicating frames or adding empty frames changes nothing); all-empty → the empty value.

Descriptor length D = u·v + 2. Everything runs as batched tensor ops over all masks at once (no Python loop
over masks, points or pixels); the cost is one sort of h·w keys per mask-frame.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def descriptor_dim(angle_bins: int, radius_bins: int) -> int:
    """Length D of the raw descriptor: u·v histogram bins + 2 position coordinates."""
    return angle_bins * radius_bins + 2


def _check_bins(angle_bins: int, radius_bins: int, num_points: int, max_radius: float) -> None:
    if angle_bins < 1 or radius_bins < 1 or num_points < 1:
        raise ValueError(
            f"shape-position descriptor needs positive bins/points, got angle_bins={angle_bins}, "
            f"radius_bins={radius_bins}, num_points={num_points}"
        )
    if not max_radius > 0:
        raise ValueError(f"shape-position descriptor: max_radius must be > 0, got {max_radius}")


def boundary_pixels(fg: Tensor) -> Tensor:
    """Bool [N, h, w] → bool [N, h, w]: foreground pixels with a 4-neighbour outside (image border = outside)."""
    n, h, w = fg.shape
    padded = torch.zeros((n, h + 2, w + 2), dtype=torch.bool, device=fg.device)
    padded[:, 1:-1, 1:-1] = fg
    interior = padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:]
    return fg & ~interior


def frame_descriptors(
    masks: Tensor,
    angle_bins: int = 36,
    radius_bins: int = 12,
    num_points: int = 200,
    outside_value: float = -1.0 / 16.0,
    max_radius: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Per-frame descriptors of single-frame masks.

    Args:
        masks: [N, h, w] mask logits, {0, 1} floats or bools (foreground = ``> 0``).
    Returns:
        (descriptors float32 [N, u·v + 2], valid bool [N] = mask non-empty).
    """
    _check_bins(angle_bins, radius_bins, num_points, max_radius)
    if masks.dim() != 3:
        raise ValueError(f"frame_descriptors expects masks [N, h, w], got shape {tuple(masks.shape)}")
    n, h, w = masks.shape
    dev = masks.device
    u, v, m = angle_bins, radius_bins, num_points
    fg = (masks > 0) if masks.dtype != torch.bool else masks
    fg = fg.detach()
    flat_fg = fg.reshape(n, h * w)
    area = flat_fg.sum(1)  # [N]
    valid = area > 0
    ys = torch.arange(h, device=dev, dtype=torch.float32).repeat_interleave(w)  # [h·w] row of each pixel
    xs = torch.arange(w, device=dev, dtype=torch.float32).repeat(h)
    # coordinate sums by matmul: exact in float32 (integers < 2^24 for any mask up to ~1000 x 1000)
    sums = flat_fg.float() @ torch.stack([xs, ys], dim=1)  # [N, 2]
    centre = sums / area.clamp(min=1).float().unsqueeze(1)
    cx, cy = centre[:, 0], centre[:, 1]

    # contour points: boundary pixels compacted to [N, K_max] (raster order), then stably sorted by angle;
    # padding slots get +inf keys and sort last. One host sync (nonzero) sizes the padded tensor.
    border = boundary_pixels(fg).reshape(n, h * w)
    num_border = border.sum(1)  # [N], > 0 iff the mask is non-empty
    owner, pixel = border.nonzero(as_tuple=True)  # grouped by mask, raster order within a mask
    start = torch.cumsum(num_border, 0) - num_border
    slot = torch.arange(owner.shape[0], device=dev) - start[owner]
    k_max = max(int(num_border.max()), 1) if n else 1
    dx = (pixel % w).float() - cx[owner]
    dy = torch.div(pixel, w, rounding_mode="floor").float() - cy[owner]
    keys = torch.full((n, k_max), math.inf, device=dev)
    keys[owner, slot] = torch.atan2(dy, dx)
    radii = torch.zeros((n, k_max), device=dev)
    radii[owner, slot] = torch.sqrt(dx * dx + dy * dy)
    p_angle_sorted, order = torch.sort(keys, dim=1, stable=True)
    rank = torch.arange(m, device=dev, dtype=torch.long)
    pick = (rank.unsqueeze(0) * num_border.unsqueeze(1)) // m  # [N, M], ⌊k·K/M⌋ < K
    p_angle = torch.gather(p_angle_sorted, 1, pick)
    p_angle = torch.where(valid.unsqueeze(1), p_angle, torch.zeros_like(p_angle))  # empty masks: no inf → long
    p_radius = torch.gather(radii, 1, torch.gather(order, 1, pick))

    ring = max_radius * math.hypot(h, w) / v  # width of one radius bin in pixels
    a_bin = torch.floor((p_angle + math.pi) / (2 * math.pi) * u).long().remainder(u)
    r_bin = torch.floor(p_radius / ring).long().clamp(max=v - 1)
    counts = torch.zeros(n, u * v, device=dev, dtype=torch.float32)
    counts.scatter_add_(1, a_bin * v + r_bin, torch.ones_like(p_angle))
    counts = counts / m

    # bins whose centre lies outside the mask (or the image) take the outside value
    theta = (torch.arange(u, device=dev, dtype=torch.float32) + 0.5) * (2 * math.pi / u) - math.pi
    radius = (torch.arange(v, device=dev, dtype=torch.float32) + 0.5) * ring
    off_x = (torch.cos(theta)[:, None] * radius[None, :]).reshape(-1)  # [u·v], angle-major
    off_y = (torch.sin(theta)[:, None] * radius[None, :]).reshape(-1)
    col = torch.floor(cx.unsqueeze(1) + off_x + 0.5).long()  # [N, u·v]
    row = torch.floor(cy.unsqueeze(1) + off_y + 0.5).long()
    in_image = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    lookup = (row.clamp(0, h - 1) * w + col.clamp(0, w - 1))
    centre_inside = in_image & torch.gather(flat_fg, 1, lookup)
    hist = torch.where(centre_inside, counts, torch.full_like(counts, outside_value))

    pos = torch.stack([(cx + 0.5) / w, (cy + 0.5) / h], dim=1)
    pos = torch.where(valid.unsqueeze(1), pos, torch.zeros_like(pos))
    return torch.cat([hist, pos], dim=1), valid


def shape_position_descriptor(
    masks: Tensor,
    angle_bins: int = 36,
    radius_bins: int = 12,
    num_points: int = 200,
    outside_value: float = -1.0 / 16.0,
    max_radius: float = 1.0,
) -> Tensor:
    """Raw descriptor H of masks [..., T, h, w] → float32 [..., u·v + 2] (mean over non-empty frames).

    No gradient flows through H (it is built from thresholded masks).
    """
    if masks.dim() < 3:
        raise ValueError(f"shape_position_descriptor expects masks [..., T, h, w], got shape {tuple(masks.shape)}")
    lead, (t, h, w) = masks.shape[:-3], masks.shape[-3:]
    desc, valid = frame_descriptors(
        masks.reshape(-1, h, w), angle_bins, radius_bins, num_points, outside_value, max_radius
    )
    desc = desc.view(-1, t, desc.shape[-1])
    weight = valid.view(-1, t, 1).float()
    seen = weight.sum(1)  # [N', 1]
    mean = (desc * weight).sum(1) / seen.clamp(min=1)
    empty = torch.full_like(mean, outside_value)
    empty[:, -2:] = 0.0
    out = torch.where(seen > 0, mean, empty)
    return out.view(*lead, out.shape[-1])


def downsample_masks(masks: Tensor, max_size: int | None) -> Tensor:
    """Foreground (``> 0``) of masks [..., h, w] as bool, area-downsampled so that max(h, w) ≤ ``max_size``
    (a low-resolution pixel is foreground when more than half of it is); unchanged size if already small.
    H normalises radius by the diagonal and position by the image size, so it is nearly resolution-free."""
    fg = masks if masks.dtype == torch.bool else masks > 0
    h, w = fg.shape[-2:]
    if max_size is None or max(h, w) <= max_size:
        return fg
    scale = max_size / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    small = F.adaptive_avg_pool2d(fg.reshape(-1, 1, h, w).float(), size) > 0.5
    return small.view(*fg.shape[:-2], *size)


def descriptor_change(h_ref: Tensor, h_other: Tensor, eps: float = 1e-12) -> Tensor:
    """ΔH = ‖H_other − H_ref‖₂ / ‖H_ref‖₂ over the last dim (GvSeg §5), broadcasting leading dims."""
    return (h_other - h_ref).norm(dim=-1) / h_ref.norm(dim=-1).clamp(min=eps)


class ShapePositionEncoder(nn.Module):
    """H projected to the query width: masks [B, n, T, h, w] → [B, n, d_model].

    The raw descriptor (see module docstring; outside bins = −1/√d_model) goes through a 2-layer MLP
    (Linear D→d, ReLU, Linear d→d). Masks are detached: gradients reach only the MLP. ``max_mask_size``
    (optional) area-downsamples the masks first so that max(h, w) ≤ it (cost control for the decoder hook).
    """

    def __init__(
        self,
        d_model: int,
        angle_bins: int = 36,
        radius_bins: int = 12,
        num_points: int = 200,
        max_radius: float = 1.0,
        max_mask_size: int | None = None,
    ) -> None:
        super().__init__()
        _check_bins(angle_bins, radius_bins, num_points, max_radius)
        if max_mask_size is not None and max_mask_size < 1:
            raise ValueError(f"ShapePositionEncoder: max_mask_size must be ≥ 1 or None, got {max_mask_size}")
        self.max_mask_size = max_mask_size
        self.d_model = d_model
        self.angle_bins, self.radius_bins = angle_bins, radius_bins
        self.num_points, self.max_radius = num_points, max_radius
        self.outside_value = -1.0 / math.sqrt(d_model)
        dim = descriptor_dim(angle_bins, radius_bins)
        self.proj = nn.Sequential(nn.Linear(dim, d_model), nn.ReLU(inplace=True), nn.Linear(d_model, d_model))

    @property
    def descriptor_dim(self) -> int:
        return descriptor_dim(self.angle_bins, self.radius_bins)

    @torch.no_grad()
    def descriptor(self, masks: Tensor) -> Tensor:
        """Raw H of masks [..., T, h, w] → [..., u·v + 2] (used for ΔH in contrastive sampling)."""
        return shape_position_descriptor(
            downsample_masks(masks, self.max_mask_size), self.angle_bins, self.radius_bins, self.num_points,
            self.outside_value, self.max_radius,
        )

    def forward(self, masks: Tensor) -> Tensor:
        """Mask logits / binary masks [B, n, T, h, w] → projected H [B, n, d_model] (dtype of the MLP)."""
        if masks.dim() != 5:
            raise ValueError(f"ShapePositionEncoder expects masks [B, n, T, h, w], got shape {tuple(masks.shape)}")
        raw = self.descriptor(masks)
        weight = self.proj[0].weight
        return self.proj(raw.to(weight.dtype))
