"""The VOS/PET object encoder (TarViS `vos_pet_object_encoder.py`, re-written): prompt -> query content.

- `strip_tokens`: an object's reference mask cut into q raster-order strips; each strip's pixel features.
- `grid_background_tokens`: a g x g grid of the reference frame minus the objects (16 background queries).
- `PointQueryInit` (PET): point features from the 4 neck scales -> MLP init + 4 key/value tokens.
- `ObjectEncoder`: L layers of [self-attention over all queries, cross-attention of each query to ITS OWN
  tokens (padding masked), FFN]; post-norm, with learned type embeddings (background / mask / point).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidseg.model.ops import point_sample
from vidseg.model.position import sine_position_2d

KIND_BACKGROUND, KIND_MASK, KIND_POINT = 0, 1, 2


def _gather_tokens(
    feat: Tensor, pos: Tensor, index_sets: list[Tensor], pixels: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor]:
    """feat/pos [d, h, w]; index_sets: flat pixel indices per query -> tokens, positions [n, P, d], pad [n, P]."""
    flat_f, flat_p = feat.flatten(1).t(), pos.flatten(1).t()  # [h*w, d]
    chosen = []
    for idx in index_sets:
        if idx.numel() > pixels:
            perm = torch.randperm(idx.numel(), generator=generator, device="cpu")[:pixels].to(idx.device)
            idx = idx[perm]
        chosen.append(idx)
    width = max(1, max(i.numel() for i in chosen))
    n = len(chosen)
    index = torch.zeros(n, width, dtype=torch.long, device=feat.device)
    pad = torch.ones(n, width, dtype=torch.bool, device=feat.device)
    for j, idx in enumerate(chosen):
        index[j, : idx.numel()] = idx
        pad[j, : idx.numel()] = False
    return flat_f[index], flat_p[index], pad


def strip_tokens(
    feat: Tensor, pos: Tensor, mask: Tensor, q: int, pixels: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Cut `mask` [h, w] into q contiguous raster-order pieces; features of up to `pixels` pixels per piece.

    A piece with no pixel (object smaller than q pixels) reuses the whole mask; an empty mask uses the frame.
    Returns tokens [q, P, d], positions [q, P, d], padding [q, P] (True = padding)."""
    fg = torch.nonzero(mask.flatten()).flatten()
    if fg.numel() == 0:
        fg = torch.arange(mask.numel(), device=mask.device)
    pieces = [p if p.numel() else fg for p in torch.tensor_split(fg, q)]
    return _gather_tokens(feat, pos, pieces, pixels, generator)


def grid_background_tokens(
    feat: Tensor, pos: Tensor, foreground: Tensor, grid: int, pixels: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """g x g cells of the frame with the foreground removed (a cell that is all foreground keeps its pixels)."""
    h, w = foreground.shape
    ys = torch.arange(h, device=feat.device) * grid // h
    xs = torch.arange(w, device=feat.device) * grid // w
    cell = (ys[:, None] * grid + xs[None, :]).flatten()  # [h*w]
    bg = ~foreground.flatten()
    pieces = []
    for c in range(grid * grid):
        in_cell = cell == c
        idx = torch.nonzero(in_cell & bg).flatten()
        pieces.append(idx if idx.numel() else torch.nonzero(in_cell).flatten())
    return _gather_tokens(feat, pos, pieces, pixels, generator)


class PointQueryInit(nn.Module):
    """PET query init: nearest point features of the 4 neck outputs -> MLP(4d -> d -> d -> d) and 4 tokens."""

    def __init__(self, d_model: int, num_levels: int = 4) -> None:
        super().__init__()
        self.num_levels = num_levels
        self.mlp = nn.Sequential(
            nn.Linear(num_levels * d_model, d_model), nn.ReLU(inplace=True),
            nn.Linear(d_model, d_model), nn.ReLU(inplace=True), nn.Linear(d_model, d_model),
        )
        self.token_proj = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(num_levels))

    def forward(self, levels: list[Tensor], points: Tensor, frames: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """levels: num_levels maps [T, d, h, w] of one clip; points [N, 2] (x, y) in [0, 1]; frames [N].
        Returns init [N, d], tokens [N, L, d], token positions [N, L, d]."""
        feats = []
        for lvl in levels:
            sampled = point_sample(lvl[frames], points[:, None, :], mode="nearest")  # [N, d, 1]
            feats.append(sampled[..., 0])
        init = self.mlp(torch.cat(feats, -1))
        tokens = torch.stack([proj(f) for proj, f in zip(self.token_proj, feats)], 1)
        d = tokens.shape[-1]
        grid = sine_position_2d(64, 64, d, device=points.device, dtype=tokens.dtype)  # fine grid for the point
        pos = point_sample(grid.expand(points.shape[0], -1, -1, -1), points[:, None, :])[..., 0]  # [N, d]
        return init, tokens, pos[:, None, :].expand(-1, self.num_levels, -1)


class _EncoderLayer(nn.Module):
    def __init__(self, d: int, n_heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.self_attn = nn.MultiheadAttention(d, n_heads, batch_first=True)
        self.norm1 = nn.LayerNorm(d)
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, d))
        self.norm3 = nn.LayerNorm(d)

    def forward(self, x: Tensor, type_pos: Tensor, tokens: Tensor, tok_pos: Tensor, pad: Tensor) -> Tensor:
        qk = x + type_pos
        x = self.norm1(x + self.self_attn(qk, qk, x, need_weights=False)[0])
        b, n, p, d = tokens.shape
        h = self.n_heads
        q = self.q(x + type_pos).reshape(b * n, 1, h, d // h).transpose(1, 2)
        k = self.k(tokens + tok_pos).reshape(b * n, p, h, d // h).transpose(1, 2)
        v = self.v(tokens).reshape(b * n, p, h, d // h).transpose(1, 2)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=~pad.reshape(b * n, 1, 1, p))
        x = self.norm2(x + self.o(attn.transpose(1, 2).reshape(b, n, d)))
        return self.norm3(x + self.ffn(x))


class ObjectEncoder(nn.Module):
    """Refines prompt-pooled query inits: each query attends to its own tokens only."""

    def __init__(self, d_model: int, num_layers: int = 4, ffn_dim: int = 2048, n_heads: int = 8) -> None:
        super().__init__()
        self.type_embed = nn.Embedding(3, d_model)  # background / mask object / point object
        self.layers = nn.ModuleList(_EncoderLayer(d_model, n_heads, ffn_dim) for _ in range(num_layers))

    def forward(self, init: Tensor, tokens: Tensor, tok_pos: Tensor, pad: Tensor, kinds: Tensor) -> Tensor:
        """init [B, n, d]; tokens/tok_pos [B, n, P, d]; pad [B, n, P] (True = padding); kinds [n]."""
        x = init
        type_pos = self.type_embed(kinds)[None].expand(x.shape[0], -1, -1)
        for layer in self.layers:
            x = layer(x, type_pos, tokens, tok_pos, pad)
        return x
