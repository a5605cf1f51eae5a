"""GvSeg task-oriented query initialisation (gvseg.md §1, §4): grid cells (VIS, VPS things), per-class EMA
prototypes (VSS, VPS stuff) and prompt-sampled features (VOS masks, PET points).

S, N, the momentum and whether the grid is random at test time are not given by GvSeg; our choices: cells
are drawn at random per clip in training and spread evenly (fixed) in eval mode; the momentum is a parameter.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from vidseg.data.records import IGNORE_LABEL


class GridQueryInit(nn.Module):
    """Queries from an S×S grid over a feature map: appearance (cell-pooled features) + cell position.

    forward(features [B, T, C, h, w]) → content [B, N, d]: each frame is average-pooled to S×S cells, cells
    are averaged over T, N cells are chosen (random per clip when training, evenly spread in eval), and each
    chosen cell gives ``proj(appearance) + cell_embed[cell]`` (a learned embedding per cell = position).
    The chosen cell indices [B, N] are kept in ``last_cells`` (for logging / tests).
    """

    def __init__(self, d_model: int, grid: int = 16, num_queries: int = 100, in_channels: int | None = None) -> None:
        super().__init__()
        if grid < 1 or num_queries < 1:
            raise ValueError(f"GridQueryInit: grid and num_queries must be positive, got {grid}, {num_queries}")
        if num_queries > grid * grid:
            raise ValueError(f"GridQueryInit: num_queries={num_queries} exceeds the {grid * grid} cells of a "
                             f"{grid}x{grid} grid")
        self.grid, self.num_queries = grid, num_queries
        self.proj = nn.Linear(in_channels or d_model, d_model)
        self.cell_embed = nn.Embedding(grid * grid, d_model)
        self.last_cells: Tensor | None = None

    def cells(self, batch_size: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        """Long [B, N] cell indices (row-major in the S×S grid)."""
        total = self.grid * self.grid
        if self.training:
            rng_device = generator.device if generator is not None else device
            scores = torch.rand((batch_size, total), generator=generator, device=rng_device)
            return scores.argsort(dim=1)[:, : self.num_queries].to(device)
        even = torch.linspace(0, total - 1, self.num_queries, device=device).round().long()
        return even.unsqueeze(0).expand(batch_size, -1)

    def forward(self, features: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if features.dim() != 5:
            raise ValueError(f"GridQueryInit expects features [B, T, C, h, w], got shape {tuple(features.shape)}")
        b, t, c, h, w = features.shape
        pooled = F.adaptive_avg_pool2d(features.reshape(b * t, c, h, w), self.grid)  # [B·T, C, S, S]
        pooled = pooled.view(b, t, c, self.grid * self.grid).mean(1).transpose(1, 2)  # [B, S·S, C]
        cells = self.cells(b, features.device, generator)
        self.last_cells = cells
        appearance = torch.gather(pooled, 1, cells.unsqueeze(-1).expand(-1, -1, c))
        return self.proj(appearance) + self.cell_embed(cells)


class PrototypeBank(nn.Module):
    """One query per class kept as an exponential moving average of class-pooled features (GvSeg VSS).

    ``update(features, semantic)``: for every class c present in the batch (pixels of c over all clips and
    frames; IGNORE_LABEL and out-of-range labels excluded), prototype_c ← m·prototype_c + (1 − m)·mean
    feature of c; absent classes are unchanged. With ``copy_first`` a class's first observation replaces
    its (random) initial prototype instead. Under DDP the sums and counts are all-reduced first, so every
    rank applies the same update. forward() → [C, d] query content = ``proj(prototypes)`` (proj starts as
    the identity; gradients reach proj, never the EMA buffer).
    """

    def __init__(self, num_classes: int, d_model: int, momentum: float = 0.99, copy_first: bool = True) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"PrototypeBank: num_classes must be positive, got {num_classes}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"PrototypeBank: momentum must be in [0, 1), got {momentum}")
        self.num_classes, self.momentum, self.copy_first = num_classes, momentum, copy_first
        self.register_buffer("prototypes", torch.randn(num_classes, d_model))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))
        self.proj = nn.Linear(d_model, d_model)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(d_model))
            self.proj.bias.zero_()

    def forward(self) -> Tensor:
        # clone: `update` changes the buffer in place after the forward, autograd keeps this snapshot
        return self.proj(self.prototypes.clone())

    @torch.no_grad()
    def class_means(self, features: Tensor, semantic: Tensor) -> tuple[Tensor, Tensor]:
        """(sums [C, d], pixel counts [C]) of features [B, T, d, h, w] under semantic [B, T, H, W] (nearest
        resized to h×w)."""
        if features.dim() != 5 or semantic.dim() != 4 or features.shape[:2] != semantic.shape[:2]:
            raise ValueError(
                f"PrototypeBank.update expects features [B, T, d, h, w] and semantic [B, T, H, W] with the same "
                f"B, T; got {tuple(features.shape)} and {tuple(semantic.shape)}"
            )
        b, t, d, h, w = features.shape
        labels = F.interpolate(semantic.reshape(b * t, 1, *semantic.shape[-2:]).float(), size=(h, w),
                               mode="nearest").long().view(-1)
        keep = (labels >= 0) & (labels < self.num_classes) & (labels != IGNORE_LABEL)
        feats = features.detach().float().permute(0, 1, 3, 4, 2).reshape(-1, d)
        sums = torch.zeros(self.num_classes, d, device=features.device)
        sums.index_add_(0, labels[keep], feats[keep])
        counts = torch.bincount(labels[keep], minlength=self.num_classes).float()
        return sums, counts

    @torch.no_grad()
    def update(self, features: Tensor, semantic: Tensor) -> Tensor:
        """EMA update from one batch; returns the bool [C] mask of classes that were updated."""
        sums, counts = self.class_means(features, semantic)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        present = counts > 0
        means = sums / counts.clamp(min=1).unsqueeze(1)
        protos = self.prototypes
        ema = self.momentum * protos + (1.0 - self.momentum) * means.to(protos.dtype)
        if self.copy_first:
            ema = torch.where((~self.seen).unsqueeze(1), means.to(protos.dtype), ema)
        protos.copy_(torch.where(present.unsqueeze(1), ema, protos))
        self.seen |= present
        return present


def panoptic_queries(
    grid_init: GridQueryInit, bank: PrototypeBank, features: Tensor, stuff_classes: Tensor,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """GvSeg VPS: thing queries from the grid [B, N, d], stuff queries = prototypes of ``stuff_classes`` [S, d]."""
    return grid_init(features, generator), bank()[stuff_classes]


class PromptFeatureInit(nn.Module):
    """Query content sampled at the prompt (GvSeg EVS): mask-average-pooled features (VOS) or the bilinear
    feature at a point (PET), then a Linear; one query per object.
    """

    def __init__(self, d_model: int, in_channels: int | None = None) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels or d_model, d_model)

    @staticmethod
    def _frames(features: Tensor, frames: Tensor) -> Tensor:
        """features [B, T, C, h, w], frames long [B, N] → [B, N, C, h, w] (each object's reference frame)."""
        b, t = features.shape[:2]
        if frames.shape[0] != b or frames.dim() != 2:
            raise ValueError(f"prompt frames must be [B={b}, N], got shape {tuple(frames.shape)}")
        if bool(((frames < 0) | (frames >= t)).any()):
            raise ValueError(f"prompt frames must index the clip's {t} frames, got {frames.tolist()}")
        idx = frames.view(b, -1, 1, 1, 1).expand(-1, -1, *features.shape[2:])
        return torch.gather(features, 1, idx)

    def from_masks(self, features: Tensor, masks: Tensor, frames: Tensor) -> Tensor:
        """masks bool [B, N, H, W] (area-resized to h×w, > 0.5 kept) on frames [B, N] → content [B, N, d]."""
        b, n = masks.shape[:2]
        per_obj = self._frames(features, frames)  # [B, N, C, h, w]
        h, w = features.shape[-2:]
        small = F.interpolate(masks.reshape(b * n, 1, *masks.shape[-2:]).float(), size=(h, w), mode="area")
        small = (small > 0.5).float().view(b, n, 1, h, w)
        area = small.sum((-1, -2))  # [B, N, 1]
        if bool((area == 0).any()):
            empty = (area[..., 0] == 0).nonzero().tolist()
            raise ValueError(f"PromptFeatureInit: prompt masks (batch, object) {empty} are empty at {h}x{w}")
        pooled = (per_obj * small).sum((-1, -2)) / area
        return self.proj(pooled)

    def from_points(self, features: Tensor, points: Tensor, frames: Tensor) -> Tensor:
        """points [B, N, 2] (x, y) in [0, 1] of the image on frames [B, N] → content [B, N, d]."""
        if not bool(torch.isfinite(points).all()):
            raise ValueError("PromptFeatureInit: point prompts contain NaN/inf (object without a point)")
        b, n = points.shape[:2]
        per_obj = self._frames(features, frames)  # [B, N, C, h, w]
        grid = (points * 2 - 1).reshape(b * n, 1, 1, 2).to(per_obj.dtype)
        sampled = F.grid_sample(per_obj.flatten(0, 1), grid, mode="bilinear", align_corners=False)
        return self.proj(sampled.view(b, n, -1))
