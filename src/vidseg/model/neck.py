"""TarViS temporal neck: Mask2Former's multi-scale deformable-attention pixel decoder, with space-time
window self-attention after every deformable layer, then an FPN step to stride 4 (tarvis.md §6.2) and, with
``mask_stride=2`` (ours, for low-resolution inputs: a 64-px frame has 16x16 stride-4 masks), one more to stride 2.

Layout inside the encoder: per frame, the three levels (strides 32, 16, 8) are flattened and concatenated
into tokens [B*T, S, d] (level 0 = stride 32). Window attention rearranges them into windows that each
cover the same 64x64-pixel region on all levels and all T frames ([B*nW, T*84, d]) by pure reshapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vidseg.model.ops import MSDeformAttn, window_merge, window_partition
from vidseg.model.position import sine_position_2d, sine_position_3d

ENCODER_STRIDES: tuple[int, ...] = (32, 16, 8)


@dataclass
class NeckOutput:
    """Neck outputs: ``features`` = [F32, F16, F8], each [B, T, d, H/s, W/s]; ``mask_features`` = F4
    [B, T, mask_dim, H/4, W/4] (F2, [.., H/2, W/2], with ``mask_stride=2``)."""

    features: list[Tensor]
    mask_features: Tensor
    strides: tuple[int, ...] = ENCODER_STRIDES


class FeedForward(nn.Module):
    """Post-norm FFN block: x + dropout(W2 relu(W1 x)), then LayerNorm."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x))))))


class DeformableEncoderLayer(nn.Module):
    """Per-frame multi-scale deformable self-attention + FFN (post-norm, Mask2Former)."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float, n_levels: int, n_heads: int,
                 n_points: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, ffn_dim, dropout)

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor,
                spatial_shapes: list[tuple[int, int]]) -> Tensor:
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes)
        return self.ffn(self.norm(src + self.dropout(attn)))


class SpaceTimeWindowAttention(nn.Module):
    """Self-attention inside space-time windows spanning all levels and all frames, + FFN (post-norm).

    ``cells[l]`` is the window side in cells on level l (2, 4, 8 for strides 32, 16, 8 and 64-px windows);
    queries/keys get ``pos_windows`` (3D sine + level_embed_3d, already in window layout), values do not.
    """

    def __init__(self, d_model: int, n_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"SpaceTimeWindowAttention: d_model={d_model} not divisible by "
                             f"n_heads={n_heads}")
        self.n_heads = n_heads
        self.dropout_p = dropout
        self.qk_proj = nn.Linear(d_model, 2 * d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, ffn_dim, dropout)

    def to_windows(self, src: Tensor, frames: int, spatial_shapes: list[tuple[int, int]],
                   cells: Sequence[int]) -> Tensor:
        """[B*T, S, d] level-concatenated tokens -> [B*nW, T*sum(cells^2), d] window tokens."""
        bt, _, d = src.shape
        batch = bt // frames
        per_level = src.split([h * w for h, w in spatial_shapes], dim=1)
        windows = [window_partition(x.reshape(batch, frames, h, w, d), cell)
                   for x, (h, w), cell in zip(per_level, spatial_shapes, cells)]
        return torch.cat(windows, dim=1)

    def from_windows(self, tokens: Tensor, frames: int, spatial_shapes: list[tuple[int, int]],
                     cells: Sequence[int], batch: int) -> Tensor:
        """Inverse of :meth:`to_windows`."""
        d = tokens.shape[-1]
        per_level = tokens.split([frames * c * c for c in cells], dim=1)
        maps = [window_merge(x, cell, batch, frames, h, w).reshape(batch * frames, h * w, d)
                for x, (h, w), cell in zip(per_level, spatial_shapes, cells)]
        return torch.cat(maps, dim=1)

    def attend(self, tokens: Tensor, pos_windows: Tensor) -> Tensor:
        """tokens [B*nW, L, d], pos_windows [nW, L, d] -> attention output [B*nW, L, d] (before residual)."""
        bw, length, d = tokens.shape
        nw = pos_windows.shape[0]
        with_pos = (tokens.view(bw // nw, nw, length, d) + pos_windows).view(bw, length, d)
        q, k = self.qk_proj(with_pos).view(bw, length, 2, self.n_heads, d // self.n_heads).unbind(2)
        v = self.v_proj(tokens).view(bw, length, self.n_heads, d // self.n_heads)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             dropout_p=self.dropout_p if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(bw, length, d))

    def forward(self, src: Tensor, pos_windows: Tensor, frames: int, spatial_shapes: list[tuple[int, int]],
                cells: Sequence[int]) -> Tensor:
        batch = src.shape[0] // frames
        tokens = self.to_windows(src, frames, spatial_shapes, cells)
        tokens = self.norm(tokens + self.dropout(self.attend(tokens, pos_windows)))
        tokens = self.ffn(tokens)
        return self.from_windows(tokens, frames, spatial_shapes, cells, batch)


class TemporalEncoderLayer(nn.Module):
    """One neck layer: deformable attention per frame, then (optionally) space-time window attention."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float, n_levels: int, n_heads: int, n_points: int,
                 temporal_window_attention: bool) -> None:
        super().__init__()
        self.deformable = DeformableEncoderLayer(d_model, ffn_dim, dropout, n_levels, n_heads, n_points)
        self.window = SpaceTimeWindowAttention(d_model, n_heads, ffn_dim, dropout) \
            if temporal_window_attention else None

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor, pos_windows: Tensor | None,
                frames: int, spatial_shapes: list[tuple[int, int]], cells: Sequence[int]) -> Tensor:
        src = self.deformable(src, pos, reference_points, spatial_shapes)
        if self.window is not None:
            src = self.window(src, pos_windows, frames, spatial_shapes, cells)
        return src


def _conv_gn(in_ch: int, out_ch: int, kernel: int, relu: bool = False) -> nn.Sequential:
    conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False)
    nn.init.kaiming_uniform_(conv.weight, a=1)  # detectron2 c2_xavier_fill
    layers: list[nn.Module] = [conv, nn.GroupNorm(32, out_ch)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class TemporalNeck(nn.Module):
    """Backbone maps [B*T, C_i, H/s, W/s] (strides 4, 8, 16, 32; with ``mask_stride=2`` first also 2) ->
    :class:`NeckOutput`.

    Args:
        in_channels: channels of the backbone maps (``Backbone.channels``): strides 4/8/16/32, or 2/4/8/16/32
            with ``mask_stride=2``.
        d_model: token width (256); GroupNorm(32) requires a multiple of 32.
        num_layers: encoder layers (6 in the paper, 1-2 for tiny runs).
        n_heads, n_points, ffn_dim, dropout: deformable/window attention settings (8, 4, 1024, 0).
        temporal_window_attention: interleave space-time window attention (False = per-frame Mask2Former).
        window_px: side of the aligned window region in input pixels (64).
        mask_dim: channels of the mask features (default d_model).
        mask_stride: stride of the mask features: 4 (TarViS) or 2 (one more FPN step on the stride-2 map; at
            64 px the stride-4 masks alone cap a perfect mask's IoU near 0.79).
        activation_checkpointing: recompute encoder layers in backward (saves memory in training).
    """

    def __init__(self, in_channels: Sequence[int], d_model: int = 256, num_layers: int = 6, n_heads: int = 8,
                 n_points: int = 4, ffn_dim: int = 1024, dropout: float = 0.0,
                 temporal_window_attention: bool = True, window_px: int = 64, mask_dim: int | None = None,
                 activation_checkpointing: bool = False, mask_stride: int = 4) -> None:
        super().__init__()
        if mask_stride not in (2, 4):
            raise ValueError(f"TemporalNeck: mask_stride must be 4 or 2, got {mask_stride!r}")
        self.mask_stride = int(mask_stride)
        self.input_strides: tuple[int, ...] = (2, 4, 8, 16, 32) if mask_stride == 2 else (4, 8, 16, 32)
        if len(in_channels) != len(self.input_strides):
            raise ValueError(f"TemporalNeck (mask_stride={mask_stride}) needs channels of the stride-"
                             f"{'/'.join(map(str, self.input_strides))} maps, got {list(in_channels)}")
        fine_channels = list(in_channels[:-4])  # the stride-2 map's channels, if any
        in_channels = list(in_channels[-4:])
        if d_model % 32:
            raise ValueError(f"TemporalNeck: d_model={d_model} must be a multiple of 32 (GroupNorm(32))")
        if any(window_px % s for s in ENCODER_STRIDES):
            raise ValueError(f"TemporalNeck: window_px={window_px} must be a multiple of "
                             f"{max(ENCODER_STRIDES)}")
        self.d_model = d_model
        self.window_px = window_px
        self.cells = tuple(window_px // s for s in ENCODER_STRIDES)
        self.activation_checkpointing = activation_checkpointing
        n_levels = len(ENCODER_STRIDES)
        # in_channels are ordered by stride 4, 8, 16, 32; the encoder takes 32, 16, 8
        self.input_proj = nn.ModuleList()
        for ch in reversed(in_channels[1:]):
            conv = nn.Conv2d(ch, d_model, kernel_size=1)
            nn.init.xavier_uniform_(conv.weight, gain=1)
            nn.init.zeros_(conv.bias)
            self.input_proj.append(nn.Sequential(conv, nn.GroupNorm(32, d_model)))
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        self.level_embed_3d = nn.Parameter(torch.empty(n_levels, d_model))
        self.layers = nn.ModuleList(
            TemporalEncoderLayer(d_model, ffn_dim, dropout, n_levels, n_heads, n_points,
                                 temporal_window_attention)
            for _ in range(num_layers)
        )
        self.lateral_conv = _conv_gn(in_channels[0], d_model, 1)
        self.output_conv = _conv_gn(d_model, d_model, 3, relu=True)
        self.fine_lateral_conv = _conv_gn(fine_channels[0], d_model, 1) if fine_channels else None
        # 1x1 (not 3x3 as at stride 4): at stride 2 the 3x3 conv was most of the extra cost (encode fwd+bwd on
        # 4x3 64-px frames: stride 4 80 ms, stride 2 with 3x3 134 ms, with 1x1 100 ms; 1 CPU thread)
        self.fine_output_conv = _conv_gn(d_model, d_model, 1, relu=True) if fine_channels else None
        self.mask_features = nn.Conv2d(d_model, mask_dim or d_model, kernel_size=1)
        nn.init.kaiming_uniform_(self.mask_features.weight, a=1)
        nn.init.zeros_(self.mask_features.bias)
        self._reset_encoder_parameters()

    def _reset_encoder_parameters(self) -> None:
        for layer in self.layers:
            for module in layer.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight)
                    nn.init.zeros_(module.bias)
            layer.deformable.self_attn.reset_parameters()
        nn.init.normal_(self.level_embed)
        nn.init.normal_(self.level_embed_3d)

    def _check_inputs(self, features: Sequence[Tensor], frames: int) -> None:
        strides = self.input_strides
        if len(features) != len(strides):
            raise ValueError(f"TemporalNeck expects {len(strides)} maps (strides {', '.join(map(str, strides))}), "
                             f"got {len(features)}")
        n, _, h0, w0 = features[0].shape
        if frames < 1 or n % frames:
            raise ValueError(f"TemporalNeck: batch of {n} frames is not divisible by T={frames}")
        height, width = strides[0] * h0, strides[0] * w0
        if height % self.window_px or width % self.window_px:
            raise ValueError(
                f"TemporalNeck: input size {height}x{width} (from the stride-{strides[0]} map {h0}x{w0}) must be "
                f"padded to a multiple of {self.window_px} px (pad frames bottom/right before the backbone)"
            )
        for f, stride in zip(features, strides):
            if tuple(f.shape[-2:]) != (height // stride, width // stride) or f.shape[0] != n:
                raise ValueError(f"TemporalNeck: stride-{stride} map has shape {tuple(f.shape)}, expected "
                                 f"[{n}, C, {height // stride}, {width // stride}]")

    def _positions(self, frames: int, spatial_shapes: list[tuple[int, int]], device: torch.device,
                   dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor | None]:
        """2D pos + level embed [1, S, d]; reference points [1, S, L, 2]; window pos [nW, T*84, d]."""
        d = self.d_model
        pos, refs, pos_windows = [], [], []
        for level, (h, w) in enumerate(spatial_shapes):
            pos2d = sine_position_2d(h, w, d, device=device).flatten(2).transpose(1, 2)  # [1, hw, d]
            pos.append(pos2d + self.level_embed[level])
            ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
            xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
            refs.append(torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(h * w, 2))
            if self.layers[0].window is not None:
                pos3d = sine_position_3d(frames, h, w, d, device=device, channels_last=True)[None]
                pos_windows.append(window_partition(pos3d + self.level_embed_3d[level], self.cells[level]))
        reference_points = torch.cat(refs, 0)[None, :, None, :].expand(1, -1, len(spatial_shapes), 2)
        windows = torch.cat(pos_windows, dim=1).to(dtype) if pos_windows else None
        return torch.cat(pos, dim=1).to(dtype), reference_points, windows

    def forward(self, features: Sequence[Tensor], frames: int) -> NeckOutput:
        """features: backbone maps [B*T, C_i, H/s, W/s] for strides (2,) 4, 8, 16, 32; frames: T."""
        self._check_inputs(features, frames)
        fine = features[0] if self.mask_stride == 2 else None
        features = features[-4:]
        res2 = features[0]
        projected = [proj(x) for proj, x in zip(self.input_proj, reversed(features[1:]))]  # strides 32, 16, 8
        spatial_shapes = [(int(x.shape[-2]), int(x.shape[-1])) for x in projected]
        src = torch.cat([x.flatten(2).transpose(1, 2) for x in projected], dim=1)  # [B*T, S, d]
        pos, reference_points, pos_windows = self._positions(frames, spatial_shapes, src.device, src.dtype)
        for layer in self.layers:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                src = checkpoint(layer, src, pos, reference_points, pos_windows, frames, spatial_shapes,
                                 self.cells, use_reentrant=False)
            else:
                src = layer(src, pos, reference_points, pos_windows, frames, spatial_shapes, self.cells)
        bt = src.shape[0]
        maps = [x.transpose(1, 2).reshape(bt, self.d_model, h, w)
                for x, (h, w) in zip(src.split([h * w for h, w in spatial_shapes], dim=1), spatial_shapes)]
        fpn = self.lateral_conv(res2) + F.interpolate(maps[-1], size=res2.shape[-2:], mode="bilinear",
                                                      align_corners=False)
        pixels = self.output_conv(fpn)
        if fine is not None:
            assert self.fine_lateral_conv is not None and self.fine_output_conv is not None
            fpn = self.fine_lateral_conv(fine) + F.interpolate(pixels, size=fine.shape[-2:], mode="bilinear",
                                                               align_corners=False)
            pixels = self.fine_output_conv(fpn)
        mask_features = self.mask_features(pixels)
        batch = bt // frames
        return NeckOutput(
            features=[m.contiguous().view(batch, frames, *m.shape[1:]) for m in maps],
            mask_features=mask_features.view(batch, frames, *mask_features.shape[1:]),
        )
