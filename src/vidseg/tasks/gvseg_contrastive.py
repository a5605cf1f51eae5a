"""GvSeg task-oriented temporal contrastive learning (gvseg.md §5).

- Instance targets: a same-identity pair (reference frame t, other frame t + n) is a positive only if the
  shape-position descriptor changed little, ΔH = ‖H_{t+n} − H_t‖ / ‖H_t‖ < τ; otherwise it is a negative.
  Different identities are negatives. :func:`contrastive_pairs` builds the two masks. The reference is clip
  frame 0: with ``InstanceClipSampler(distant_reference=True)`` a frame drawn beyond the TarViS window (anywhere
  in the video, or within a configured gap) and prepended to the TarViS clip (``vidseg.data.sampling``).
- Semantic targets: a FIFO queue of embeddings per class (:class:`ClassQueue`) supplies positives (same class)
  and negatives (other classes); :func:`class_pairs` builds the masks.
- :func:`contrastive_loss`: the loss form is not stated by GvSeg; two forms are offered — ``"infonce"``
  (per positive: −log e^{s+} / (e^{s+} + Σ e^{s−}), averaged) and ``"idol"`` (IDOL / Tube-Link multi-positive:
  log(1 + Σ_{+} Σ_{−} e^{s− − s+})), each averaged over anchors that have at least one positive.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidseg.tasks.gvseg_descriptor import descriptor_change

LossForm = Literal["infonce", "idol"]
LOSS_FORMS: tuple[str, ...] = ("infonce", "idol")


def contrastive_pairs(
    h_ref: Tensor,
    h_other: Tensor,
    ids_ref: Tensor,
    ids_other: Tensor,
    tau: float = 0.2,
    valid_ref: Tensor | None = None,
    valid_other: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Positive / negative masks [Na, Nb] between reference and other-frame targets.

    Args:
        h_ref, h_other: raw descriptors [Na, D], [Nb, D] of each target at its frame (unprojected H).
        ids_ref, ids_other: identities [Na], [Nb]; an id < 0 (unmatched query) has no identity: it is a
            negative for everyone and never a positive.
        tau: ΔH threshold; same identity and ΔH < tau → positive, same identity and ΔH ≥ tau → negative.
        valid_ref, valid_other: optional bool [Na], [Nb]; an invalid target (e.g. not visible in its frame)
            takes part in no pair at all.
    Returns:
        (pos bool [Na, Nb], neg bool [Na, Nb]), disjoint.
    """
    if h_ref.dim() != 2 or h_other.dim() != 2 or h_ref.shape[1] != h_other.shape[1]:
        raise ValueError(
            f"contrastive_pairs expects descriptors [Na, D] and [Nb, D], got {tuple(h_ref.shape)}, "
            f"{tuple(h_other.shape)}"
        )
    if ids_ref.shape != h_ref.shape[:1] or ids_other.shape != h_other.shape[:1]:
        raise ValueError(
            f"contrastive_pairs: ids {tuple(ids_ref.shape)}, {tuple(ids_other.shape)} do not match the "
            f"descriptors {tuple(h_ref.shape)}, {tuple(h_other.shape)}"
        )
    if not tau > 0:
        raise ValueError(f"contrastive_pairs: tau must be > 0, got {tau}")
    same = (ids_ref[:, None] == ids_other[None, :]) & (ids_ref[:, None] >= 0)
    change = descriptor_change(h_ref[:, None, :], h_other[None, :, :])  # [Na, Nb]
    pos = same & (change < tau)
    neg = ~pos
    if valid_ref is not None:
        pos, neg = pos & valid_ref[:, None], neg & valid_ref[:, None]
    if valid_other is not None:
        pos, neg = pos & valid_other[None, :], neg & valid_other[None, :]
    return pos, neg


def class_pairs(classes_a: Tensor, classes_b: Tensor) -> tuple[Tensor, Tensor]:
    """Semantic targets: positive = same class, negative = different class; masks [Na, Nb]."""
    pos = classes_a[:, None] == classes_b[None, :]
    return pos, ~pos


def contrastive_loss(
    emb_a: Tensor,
    emb_b: Tensor,
    pos_mask: Tensor,
    neg_mask: Tensor,
    temperature: float = 0.1,
    form: LossForm = "infonce",
    weight: float = 1.0,
    normalize: bool = True,
) -> Tensor:
    """Contrastive loss of anchors emb_a [Na, d] against emb_b [Nb, d] (scalar, times ``weight``).

    Similarity s = cos(a, b) / temperature (``normalize``) or a·b / temperature. Anchors with no positive are
    left out; with no such anchor at all the loss is 0 (still connected to the graph).
    """
    if form not in LOSS_FORMS:
        raise ValueError(f"contrastive_loss: form must be one of {LOSS_FORMS}, got {form!r}")
    if not temperature > 0:
        raise ValueError(f"contrastive_loss: temperature must be > 0, got {temperature}")
    shape = (emb_a.shape[0], emb_b.shape[0])
    if pos_mask.shape != shape or neg_mask.shape != shape:
        raise ValueError(
            f"contrastive_loss: masks {tuple(pos_mask.shape)}, {tuple(neg_mask.shape)} must be [Na, Nb] = {shape}"
        )
    if bool((pos_mask & neg_mask).any()):
        raise ValueError("contrastive_loss: a pair is marked both positive and negative")
    a, b = (F.normalize(emb_a, dim=-1), F.normalize(emb_b, dim=-1)) if normalize else (emb_a, emb_b)
    sim = (a @ b.transpose(0, 1)).float() / temperature
    very_low = torch.finfo(sim.dtype).min / 4  # finite: keeps gradients NaN-free where a row has no entry
    neg_lse = sim.masked_fill(~neg_mask, very_low).logsumexp(dim=1)  # [Na]
    has_pos = pos_mask.any(dim=1)
    if form == "infonce":
        per_pair = torch.logaddexp(sim, neg_lse[:, None]) - sim  # −log(e^{s+} / (e^{s+} + Σ e^{s−}))
        per_pair = per_pair.masked_fill(~pos_mask, 0.0)
        per_anchor = per_pair.sum(1) / pos_mask.sum(1).clamp(min=1)
    else:
        pos_lse = (-sim).masked_fill(~pos_mask, very_low).logsumexp(dim=1)  # log Σ_{+} e^{−s+}
        per_anchor = F.softplus(neg_lse + pos_lse)  # log(1 + Σ_{+} Σ_{−} e^{s− − s+})
    if not bool(has_pos.any()):
        return sim.sum() * 0.0
    return weight * per_anchor[has_pos].mean()


class ClassQueue(nn.Module):
    """FIFO queue of at most ``size`` embeddings per class (GvSeg N_Q = 100), stored as buffers.

    push(embeddings [N, d], classes [N]) appends in the given order; when a class is full its oldest entries
    are overwritten. get(c) returns class c's entries oldest → newest; all() returns every stored entry with
    its class (for :func:`class_pairs`). Embeddings are stored detached.
    """

    def __init__(self, num_classes: int, d_model: int, size: int = 100) -> None:
        super().__init__()
        if num_classes < 1 or size < 1:
            raise ValueError(f"ClassQueue: num_classes and size must be positive, got {num_classes}, {size}")
        self.num_classes, self.size = num_classes, size
        self.register_buffer("queue", torch.zeros(num_classes, size, d_model))
        self.register_buffer("next_slot", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def push(self, embeddings: Tensor, classes: Tensor) -> None:
        """Append embeddings [N, d] of classes [N] (class indices 0..C-1), vectorised over N."""
        if embeddings.dim() != 2 or classes.shape != embeddings.shape[:1]:
            raise ValueError(
                f"ClassQueue.push expects embeddings [N, d] and classes [N], got {tuple(embeddings.shape)}, "
                f"{tuple(classes.shape)}"
            )
        if classes.numel() == 0:
            return
        classes = classes.long()
        if bool(((classes < 0) | (classes >= self.num_classes)).any()):
            bad = sorted(set(classes[(classes < 0) | (classes >= self.num_classes)].tolist()))
            raise ValueError(f"ClassQueue.push: class indices {bad} outside 0..{self.num_classes - 1}")
        order = torch.sort(classes, stable=True).indices  # grouped by class, arrival order kept
        sorted_cls = classes[order]
        per_class = torch.bincount(classes, minlength=self.num_classes)
        start = torch.cumsum(per_class, 0) - per_class
        rank = torch.arange(classes.numel(), device=classes.device) - start[sorted_cls]  # arrival rank in class
        keep = rank >= per_class[sorted_cls] - self.size  # only the newest `size` of a class survive
        slots = (self.next_slot[sorted_cls] + rank) % self.size
        self.queue[sorted_cls[keep], slots[keep]] = embeddings[order[keep]].detach().to(self.queue.dtype)
        self.next_slot.copy_((self.next_slot + per_class) % self.size)
        self.count.copy_((self.count + per_class).clamp(max=self.size))

    def get(self, cls: int) -> Tensor:
        """Class ``cls``'s stored embeddings, oldest first, [count, d]."""
        if not 0 <= cls < self.num_classes:
            raise ValueError(f"ClassQueue.get: class {cls} outside 0..{self.num_classes - 1}")
        n = int(self.count[cls])
        first = (int(self.next_slot[cls]) - n) % self.size
        idx = (first + torch.arange(n, device=self.queue.device)) % self.size
        return self.queue[cls, idx]

    def all(self) -> tuple[Tensor, Tensor]:
        """Every stored entry: (embeddings [K, d], classes [K]), class-major, unordered within a class."""
        filled = torch.arange(self.size, device=self.queue.device)[None, :] < self.count[:, None]  # [C, size]
        classes = torch.arange(self.num_classes, device=self.queue.device)[:, None].expand(-1, self.size)
        return self.queue[filled], classes[filled]


def instance_contrastive_loss(
    emb_ref: Tensor,
    emb_other: Tensor,
    ids_ref: Tensor,
    ids_other: Tensor,
    h_ref: Tensor,
    h_other: Tensor,
    tau: float = 0.2,
    temperature: float = 0.1,
    form: LossForm = "infonce",
    weight: float = 1.0,
    valid_ref: Tensor | None = None,
    valid_other: Tensor | None = None,
) -> Tensor:
    """Instance TCL: :func:`contrastive_pairs` (ΔH < tau gating) then :func:`contrastive_loss`.

    emb_*: query embeddings [Na, d], [Nb, d]; ids_*: identities (GT track ids of the matched targets, −1 for
    unmatched queries); h_*: raw descriptors of the targets' GT masks in the two frames/clips [Na, D], [Nb, D].
    """
    pos, neg = contrastive_pairs(h_ref, h_other, ids_ref, ids_other, tau, valid_ref, valid_other)
    return contrastive_loss(emb_ref, emb_other, pos, neg, temperature, form, weight)


def semantic_contrastive_loss(
    embeddings: Tensor,
    classes: Tensor,
    queue: ClassQueue,
    temperature: float = 0.1,
    form: LossForm = "infonce",
    weight: float = 1.0,
    push: bool = True,
) -> Tensor:
    """Semantic TCL: anchors [N, d] of classes [N] against the queue as it was BEFORE this call (same class =
    positive, other class = negative); then, with ``push``, the anchors are appended to the queue (detached).
    An empty queue gives 0 (connected to the graph)."""
    bank, bank_classes = queue.all()
    if bank.shape[0] == 0:
        loss = embeddings.sum() * 0.0
    else:
        pos, neg = class_pairs(classes.to(bank_classes.device), bank_classes)
        loss = contrastive_loss(embeddings, bank.to(embeddings.dtype), pos, neg, temperature, form, weight)
    if push:
        queue.push(embeddings, classes)
    return loss
