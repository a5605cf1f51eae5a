"""Masked-attention video decoder (TarViS §6.3): Mask2Former's decoder lifted to space-time.

Each of the L layers does masked cross-attention from all queries to the space-time tokens (T·H·W) of one
feature scale (layer i uses scale i mod 3: 32 → 16 → 8), then self-attention over ALL query groups together
(type embeddings added to q/k), then an FFN; post-norm, no dropout. Masks are predicted from the initial
queries and after every layer (L + 1 sets, all supervised): shared LayerNorm → per-group 3-layer MLP → dot
product with the stride-4 mask features, giving ONE mask per query for the whole clip [B, Q, T, H/4, W/4].
The hard attention mask of layer i comes from the previous prediction resized to layer i's scale.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidseg.model.position import sine_position_3d
from vidseg.model.queries import QuerySet

#: Hook adding an extra positional embedding to one group's queries before each self-attention.
#: Called with that group's previous-prediction mask logits [B, n, T, H/4, W/4]; returns [B, n, d].
QueryAdder = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class GroupOutput:
    """One query group's predictions at one decoder layer."""

    mask_logits: Tensor  # [B, n, T, H/4, W/4]
    queries: Tensor  # [B, n, d], after the decoder's LayerNorm
    embeddings: Tensor  # [B, n, d], the group's linear projection of ``queries`` (for classify())


@dataclass
class DecoderOutput:
    """Per-layer predictions: index 0 = from the initial queries, index -1 = after the last layer."""

    mask_logits: list[Tensor]  # (L + 1) × [B, Q, T, H/4, W/4]
    queries: list[Tensor]  # (L + 1) × [B, Q, d] normalised queries
    embeddings: list[Tensor]  # (L + 1) × [B, Q, d] per-group projections
    query_set: QuerySet

    @property
    def num_predictions(self) -> int:
        return len(self.mask_logits)

    def group(self, name: str, layer: int = -1) -> GroupOutput:
        """Predictions of group ``name`` at prediction index ``layer``."""
        sl = self.query_set.slices.get(name)
        if sl is None:
            raise KeyError(f"decoder output has no query group {name!r}; groups: {self.query_set.names}")
        return GroupOutput(
            self.mask_logits[layer][:, sl], self.queries[layer][:, sl], self.embeddings[layer][:, sl]
        )

    def groups(self, layer: int = -1) -> dict[str, GroupOutput]:
        """{group name: predictions} at prediction index ``layer``."""
        return {name: self.group(name, layer) for name in self.query_set.names}

    def group_all_layers(self, name: str) -> list[GroupOutput]:
        """Predictions of group ``name`` at every prediction index (for deep supervision)."""
        return [self.group(name, i) for i in range(self.num_predictions)]


def classify(inst_embed: Tensor, sem_embed: Tensor, bg_embed: Tensor) -> Tensor:
    """Class logits by similarity to semantic queries (TarViS §6.4).

    Args:
        inst_embed: projected instance queries P_inst q_i, [B, Qi, d].
        sem_embed: projected semantic queries P_sem s_c, [B, C, d] or [C, d].
        bg_embed: projected background queries P_bg q_b, [B, Nb, d] or [Nb, d] (Nb ≥ 1).
    Returns:
        [B, Qi, 1 + C]: column 0 = no-object logit = max over background similarities, then one per class.
    """
    if bg_embed.shape[-2] < 1:
        raise ValueError("classify needs at least one background query for the no-object logit")
    sem = sem_embed if sem_embed.dim() == 3 else sem_embed.unsqueeze(0).expand(inst_embed.shape[0], -1, -1)
    bg = bg_embed if bg_embed.dim() == 3 else bg_embed.unsqueeze(0).expand(inst_embed.shape[0], -1, -1)
    no_object = torch.bmm(inst_embed, bg.transpose(1, 2)).amax(dim=-1, keepdim=True)
    return torch.cat([no_object, torch.bmm(inst_embed, sem.transpose(1, 2))], dim=-1)


def _downsample_logits(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (align_corners=False) resize of [N, C, h, w] to ``size``.

    For an exact even integer factor f (the decoder's case: stride 4 → 8/16/32 gives f = 2/4/8) bilinear
    sampling lands halfway between pixels f/2 - 1 and f/2 of every f×f block, i.e. it is the mean of those
    2×2 pixels: computed with four strided views instead of a general interpolation kernel.
    """
    h, w = x.shape[-2:]
    fh, fw = h // size[0], w // size[1]
    if fh * size[0] != h or fw * size[1] != w or fh != fw or fh % 2:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    a = fh // 2 - 1
    rows0, rows1 = x[..., a::fh, :], x[..., a + 1 :: fh, :]
    return 0.25 * (
        (rows0[..., a::fw] + rows0[..., a + 1 :: fw]) + (rows1[..., a::fw] + rows1[..., a + 1 :: fw])
    )


@torch.no_grad()
def attention_mask_from_logits(mask_logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Hard cross-attention mask from mask logits (Mask2Former/TarViS).

    [B, Q, T, h, w] logits are resized to [T, *size] (trilinear with T unchanged == bilinear per frame),
    a token is kept where sigmoid ≥ 0.5 (logit ≥ 0), and a query with no kept token attends everywhere.
    Returns bool [B, 1, Q, T·H·W], True = may attend (``F.scaled_dot_product_attention`` convention),
    broadcast over heads rather than repeated per head.
    """
    b, q, t, h, w = mask_logits.shape
    small = _downsample_logits(mask_logits.detach().reshape(b, q * t, h, w), size)
    keep = (small >= 0).view(b, q, -1)
    keep |= ~keep.any(dim=-1, keepdim=True)
    return keep.unsqueeze(1)


def _mlp(d_model: int, num_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(num_layers):
        layers.append(nn.Linear(d_model, d_model))
        if i + 1 < num_layers:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class MaskHeads(nn.Module):
    """Per-group mask-embedding MLPs (``num_layers`` Linear d→d with ReLU) and linear projections P_group."""

    def __init__(self, d_model: int, groups: Sequence[str] = (), num_layers: int = 3) -> None:
        super().__init__()
        self.d_model = d_model
        self.num_layers = num_layers
        self.mask_mlps = nn.ModuleDict()
        self.projections = nn.ModuleDict()
        for name in groups:
            self.add_group(name)

    @property
    def group_names(self) -> list[str]:
        return list(self.mask_mlps.keys())

    def add_group(self, name: str) -> None:
        """Create the heads of group ``name``; no-op if they exist."""
        if not name or "." in name:
            raise ValueError(f"mask head group name must be non-empty and contain no '.', got {name!r}")
        if name in self.mask_mlps:
            return
        self.mask_mlps[name] = _mlp(self.d_model, self.num_layers)
        self.projections[name] = nn.Linear(self.d_model, self.d_model)

    def forward(self, queries: Tensor, query_set: QuerySet) -> tuple[Tensor, Tensor]:
        """Normalised queries [B, Q, d] → (mask embeddings [B, Q, d], projections [B, Q, d])."""
        missing = [n for n in query_set.names if n not in self.mask_mlps]
        if missing:
            raise KeyError(f"no mask heads for query groups {missing}; known: {self.group_names}")
        parts = query_set.split(queries)
        embeds = [self.mask_mlps[n](p) for n, p in parts.items()]
        projs = [self.projections[n](p) for n, p in parts.items()]
        if len(parts) == 1:
            return embeds[0], projs[0]
        return torch.cat(embeds, dim=1), torch.cat(projs, dim=1)


class _Attention(nn.Module):
    """Multi-head attention through ``F.scaled_dot_product_attention`` (q/k/v/out linear projections)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.n_heads, d // self.n_heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """q [B, Lq, d], k/v [B, Lk, d]; attn_mask bool [B, 1, Lq, Lk] (True = may attend) or None."""
        out = F.scaled_dot_product_attention(
            self._heads(self.q_proj(q)),
            self._heads(self.k_proj(k)),
            self._heads(self.v_proj(v)),
            attn_mask=attn_mask,
        )
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class DecoderLayer(nn.Module):
    """Masked cross-attention → self-attention → FFN, each residual + post-LayerNorm."""

    def __init__(self, d_model: int, n_heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.cross_attn = _Attention(d_model, n_heads)
        self.cross_norm = nn.LayerNorm(d_model)
        self.self_attn = _Attention(d_model, n_heads)
        self.self_norm = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, d_model)
        )
        self.ffn_norm = nn.LayerNorm(d_model)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(
        self,
        x: Tensor,
        query_pos: Tensor,
        self_pos: Tensor,
        memory: Tensor,
        memory_with_pos: Tensor,
        attn_mask: Tensor | None,
    ) -> Tensor:
        """x/query_pos/self_pos [B, Q, d]; memory (values) and memory + its positions (keys) [B, N, d];
        attn_mask [B, 1, Q, N] bool or None."""
        x = self.cross_norm(x + self.cross_attn(x + query_pos, memory_with_pos, memory, attn_mask))
        qk = x + self_pos
        x = self.self_norm(x + self.self_attn(qk, qk, x))
        return self.ffn_norm(x + self.ffn(x))


class MaskedAttentionDecoder(nn.Module):
    """L masked-attention layers over space-time tokens, cycling over ``num_scales`` scales.

    Owns the per-group :class:`MaskHeads` (``self.mask_heads``); groups are added with ``add_group``.
    """

    def __init__(
        self,
        d_model: int = 256,
        n_heads: int = 8,
        ffn_dim: int = 2048,
        num_layers: int = 9,
        num_scales: int = 3,
        mask_mlp_layers: int = 3,
        groups: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.num_layers = num_layers
        self.num_scales = num_scales
        self.layers = nn.ModuleList(DecoderLayer(d_model, n_heads, ffn_dim) for _ in range(num_layers))
        self.scale_embed = nn.Embedding(num_scales, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.mask_heads = MaskHeads(d_model, groups, num_layers=mask_mlp_layers)

    def add_group(self, name: str) -> None:
        """Create the mask MLP and projection of query group ``name`` (no-op if it exists)."""
        self.mask_heads.add_group(name)

    def _memory(self, feats: Tensor, scale: int) -> tuple[Tensor, Tensor]:
        """[B, T, d, H, W] → values = tokens [B, T·H·W, d] + scale embedding, and keys = values + 3D sine
        positions; computed once per scale and shared by the layers that use that scale."""
        b, t, d, h, w = feats.shape
        tokens = feats.permute(0, 1, 3, 4, 2).reshape(b, t * h * w, d) + self.scale_embed.weight[scale]
        pos = sine_position_3d(t, h, w, d, device=feats.device, dtype=tokens.dtype)  # [1, T, d, H, W]
        return tokens, tokens + pos.permute(0, 1, 3, 4, 2).reshape(1, t * h * w, d)

    def _predict(
        self, x: Tensor, query_set: QuerySet, mask_features: Tensor, attn_size: tuple[int, int] | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Normalised queries, projections, mask logits [B, Q, T, h4, w4] and the next attention mask."""
        b, q, _ = x.shape
        _, d, t, h4, w4 = mask_features.shape
        normed = self.norm(x)
        mask_embed, proj = self.mask_heads(normed, query_set)
        logits = torch.bmm(mask_embed, mask_features.reshape(b, d, t * h4 * w4)).view(b, q, t, h4, w4)
        attn_mask = attention_mask_from_logits(logits, attn_size) if attn_size is not None else None
        return normed, proj, logits, attn_mask

    def forward(
        self,
        features: Sequence[Tensor],
        mask_features: Tensor,
        query_set: QuerySet,
        query_adders: Mapping[str, QueryAdder] | None = None,
    ) -> DecoderOutput:
        """Decode ``query_set`` against the neck output.

        Args:
            features: ``num_scales`` tensors [B, T, d, H_s, W_s], coarsest first (F32, F16, F8).
            mask_features: F4, [B, T, d, H/4, W/4].
            query_set: the queries; its group names select the mask heads.
            query_adders: optional {group name: fn(prev mask logits [B, n, T, H/4, W/4]) → [B, n, d]};
                the result is added to that group's q/k positional embedding in every self-attention
                (GvSeg SPA hook). None falls back to ``query_set.query_adders``; None/{} there too leaves
                the computation unchanged.
        """
        if query_adders is None:
            query_adders = query_set.query_adders
        if len(features) != self.num_scales:
            raise ValueError(f"decoder expects {self.num_scales} feature scales, got {len(features)}")
        b, t, d = mask_features.shape[:3]
        if d != self.d_model:
            raise ValueError(f"mask features have {d} channels, decoder d_model is {self.d_model}")
        for s, f in enumerate(features):
            if f.dim() != 5 or tuple(f.shape[:3]) != (b, t, d):
                raise ValueError(
                    f"decoder feature scale {s} has shape {tuple(f.shape)}, expected [{b}, {t}, {d}, H, W]"
                )
        unknown = set(query_adders or {}) - set(query_set.names)
        if unknown:
            raise KeyError(
                f"query_adders name groups {sorted(unknown)} not in the query set {query_set.names}"
            )
        memories = [self._memory(f, s) for s, f in enumerate(features)]
        sizes = [tuple(f.shape[-2:]) for f in features]
        # [B, d, T, h4, w4]: one copy serves all L + 1 mask predictions as a plain bmm operand
        mf = mask_features.transpose(1, 2).contiguous()

        x = query_set.content(b)
        query_pos = query_set.type_embed().unsqueeze(0).to(x.dtype)
        normed, proj, logits, attn_mask = self._predict(x, query_set, mf, sizes[0])
        out = DecoderOutput([logits], [normed], [proj], query_set)
        for i, layer in enumerate(self.layers):
            memory, memory_with_pos = memories[i % self.num_scales]
            self_pos = query_pos
            if query_adders:
                self_pos = query_pos.expand(b, -1, -1).clone()
                for name, adder in query_adders.items():
                    sl = query_set.slices[name]
                    self_pos[:, sl] = self_pos[:, sl] + adder(logits[:, sl])
            x = layer(x, query_pos, self_pos, memory, memory_with_pos, attn_mask)
            next_size = sizes[(i + 1) % self.num_scales] if i + 1 < self.num_layers else None
            normed, proj, logits, attn_mask = self._predict(x, query_set, mf, next_size)
            out.mask_logits.append(logits)
            out.queries.append(normed)
            out.embeddings.append(proj)
        return out
