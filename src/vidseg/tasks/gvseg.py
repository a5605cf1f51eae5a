"""GvSeg task-oriented components (Chen et al., ECCV 2024; facts in ``reference/gvseg.md``), each a switch.

GvSeg's code was never released: this is vidseg's own re-implementation. Components:

- shape-position descriptor H and its projection (:mod:`vidseg.tasks.gvseg_descriptor`);
- SPA matching: :func:`spa_query_adders` feeds projected H of each *thing* group's previous prediction into
  the decoder's ``query_adders`` hook (added to q/k before every self-attention); semantic/stuff groups never
  get SPA (GvSeg: it hurts semantic generalisation). :func:`association_embedding` /
  :func:`association_scores` give S_ij = cos(q_i + H_i, q_j + H_j); :func:`spa_association` is the
  cross-clip association score of the VIS/VPS stitcher (``vidseg.inference.stitch.TrackStitcher``): H of a
  track's and of a query's masks on the frames the two clips share;
- task-oriented query init (:mod:`vidseg.tasks.gvseg_queries`): grid (VIS, VPS things), EMA class prototypes
  (VSS, VPS stuff), prompt-sampled features (VOS, PET);
- task-oriented temporal contrastive learning (:mod:`vidseg.tasks.gvseg_contrastive`): ΔH-gated pairs, per-class
  FIFO queues, InfoNCE / IDOL-style loss.

:class:`GvSegConfig` holds the switches (all off by default, so a task without it behaves as TarViS).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vidseg.model.decoder import QueryAdder
from vidseg.tasks.gvseg_contrastive import (
    LOSS_FORMS,
    ClassQueue,
    class_pairs,
    contrastive_loss,
    contrastive_pairs,
    instance_contrastive_loss,
    semantic_contrastive_loss,
)
from vidseg.tasks.gvseg_descriptor import (
    ShapePositionEncoder,
    boundary_pixels,
    descriptor_change,
    descriptor_dim,
    downsample_masks,
    frame_descriptors,
    shape_position_descriptor,
)
from vidseg.tasks.gvseg_queries import GridQueryInit, PromptFeatureInit, PrototypeBank, panoptic_queries

__all__ = [
    "ClassQueue",
    "GridQueryInit",
    "GvSegConfig",
    "PromptFeatureInit",
    "PrototypeBank",
    "SEMANTIC_GROUPS",
    "ShapePositionEncoder",
    "association_embedding",
    "association_scores",
    "boundary_pixels",
    "class_pairs",
    "contrastive_loss",
    "contrastive_pairs",
    "descriptor_change",
    "descriptor_dim",
    "downsample_masks",
    "frame_descriptors",
    "instance_contrastive_loss",
    "panoptic_queries",
    "semantic_contrastive_loss",
    "shape_position_descriptor",
    "spa_adder",
    "spa_association",
    "spa_query_adders",
]

#: Query groups that hold semantic / stuff targets: SPA is refused for them (gvseg.md §4).
SEMANTIC_GROUPS: frozenset[str] = frozenset({"semantic", "stuff"})


@dataclass(frozen=True)
class GvSegConfig:
    """GvSeg switches and hyper-parameters (defaults: all components off; numbers from gvseg.md or ours).

    Attributes:
        spa: shape-position-aware matching (H added to thing queries before self-attention, and in
            cross-clip association: tracks are linked by S = cos(q + H) instead of the overlap mask IoU).
        association_threshold: with spa, a query continues a track only if S > this (not stated; ours).
        task_init: task-oriented query init (grid / prototypes / prompt features).
        contrastive: task-oriented temporal contrastive loss.
        angle_bins, radius_bins, num_points, max_radius: descriptor H (36 × 12 bins, M = 200: gvseg.md §3;
            max_radius = fraction of the image diagonal spanned by the radius bins: ours).
        max_mask_size: downsample masks to at most this side before computing H in the SPA hook (None = off).
        tau: ΔH threshold for same-identity positives (0.2, gvseg.md §5).
        queue_size: per-class FIFO length for semantic targets (N_Q = 100, gvseg.md §5).
        grid: S of the S×S grid (not stated in GvSeg; ours). grid_queries: N cells (None = the task's
            number of instance queries).
        momentum: EMA momentum of the class prototypes (not stated; ours).
        temperature, loss_form, weight: contrastive loss (form and weight not stated; ours).
    """

    spa: bool = False
    association_threshold: float = 0.5
    task_init: bool = False
    contrastive: bool = False
    angle_bins: int = 36
    radius_bins: int = 12
    num_points: int = 200
    max_radius: float = 1.0
    max_mask_size: int | None = None
    tau: float = 0.2
    queue_size: int = 100
    grid: int = 16
    grid_queries: int | None = None
    momentum: float = 0.99
    temperature: float = 0.1
    loss_form: str = "infonce"
    weight: float = 1.0

    def __post_init__(self) -> None:
        positive = {"angle_bins": self.angle_bins, "radius_bins": self.radius_bins, "num_points": self.num_points,
                    "max_radius": self.max_radius, "tau": self.tau, "queue_size": self.queue_size,
                    "grid": self.grid, "temperature": self.temperature}
        bad = {k: v for k, v in positive.items() if not v > 0}
        if bad:
            raise ValueError(f"GvSegConfig: these values must be > 0: {bad}")
        if self.max_mask_size is not None and self.max_mask_size < 1:
            raise ValueError(f"GvSegConfig: max_mask_size must be ≥ 1 or None, got {self.max_mask_size}")
        if self.grid_queries is not None and not 0 < self.grid_queries <= self.grid * self.grid:
            raise ValueError(f"GvSegConfig: grid_queries={self.grid_queries} must be in 1..grid² = {self.grid ** 2}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"GvSegConfig: momentum must be in [0, 1), got {self.momentum}")
        if self.loss_form not in LOSS_FORMS:
            raise ValueError(f"GvSegConfig: loss_form must be one of {LOSS_FORMS}, got {self.loss_form!r}")
        if not -1.0 <= self.association_threshold < 1.0:
            raise ValueError(f"GvSegConfig: association_threshold must be in [-1, 1), got {self.association_threshold}")
        if self.weight < 0:
            raise ValueError(f"GvSegConfig: weight must be ≥ 0, got {self.weight}")

    @classmethod
    def from_any(cls, cfg: GvSegConfig | Mapping[str, Any] | None) -> GvSegConfig:
        """Build from None (all off), a mapping (a Hydra DictConfig node) or an instance; unknown keys fail."""
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        if not isinstance(cfg, Mapping):
            raise TypeError(f"GvSegConfig.from_any: expected a mapping or GvSegConfig, got {type(cfg).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"GvSegConfig: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**{str(k): v for k, v in cfg.items()})

    def encoder(self, d_model: int) -> ShapePositionEncoder:
        """The :class:`ShapePositionEncoder` with this config's descriptor settings."""
        return ShapePositionEncoder(d_model, self.angle_bins, self.radius_bins, self.num_points, self.max_radius,
                                    self.max_mask_size)


def spa_adder(encoder: ShapePositionEncoder) -> QueryAdder:
    """Decoder hook for one thing group: prev mask logits [B, n, T, H/4, W/4] → projected H [B, n, d]."""

    def add_shape_position(mask_logits: Tensor) -> Tensor:
        return encoder(mask_logits.detach())

    return add_shape_position


def spa_query_adders(
    encoder: ShapePositionEncoder, thing_groups: Iterable[str], enabled: bool = True
) -> dict[str, QueryAdder]:
    """``query_adders`` for ``model.decode``: {group: spa_adder(encoder)} for each thing group, {} if disabled.

    Raises ValueError for semantic/stuff groups (:data:`SEMANTIC_GROUPS`).
    """
    groups = list(thing_groups)
    refused = sorted(set(groups) & SEMANTIC_GROUPS)
    if refused:
        raise ValueError(f"SPA is for thing/instance groups only; refusing semantic/stuff groups {refused}")
    if not enabled:
        return {}
    adder = spa_adder(encoder)
    return {name: adder for name in groups}


def association_embedding(queries: Tensor, h: Tensor | None = None) -> Tensor:
    """Unit-norm association embedding q̂ + H ([..., n, d]); ``h=None`` (semantic/stuff targets) → q̂ alone."""
    x = queries if h is None else queries + h.to(queries.dtype)
    return F.normalize(x, dim=-1)


def association_scores(emb_a: Tensor, emb_b: Tensor) -> Tensor:
    """S_ij = cos(a_i, b_j) of association embeddings [..., n, d] × [..., m, d] → [..., n, m]."""
    return F.normalize(emb_a, dim=-1) @ F.normalize(emb_b, dim=-1).transpose(-1, -2)


def spa_association(encoder: ShapePositionEncoder) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
    """Cross-clip association score for ``TrackStitcher``: S[p, q] = cos(e_p + H(track p's masks), e_q +
    H(query q's masks)), both H from the masks on the overlap frames [n, O, h, w] (bool or logits), so the
    two sides are compared at the same frames; e = query embeddings [n, d]."""

    @torch.no_grad()
    def score(track_masks: Tensor, track_emb: Tensor, query_masks: Tensor, query_emb: Tensor) -> Tensor:
        h_tracks = encoder(track_masks.unsqueeze(0))[0]  # [P, d]
        h_queries = encoder(query_masks.unsqueeze(0))[0]  # [Q, d]
        return association_scores(association_embedding(track_emb, h_tracks),
                                  association_embedding(query_emb, h_queries))

    return score
