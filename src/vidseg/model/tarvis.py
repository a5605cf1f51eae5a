"""The TarViS network: backbone + temporal neck + masked-attention decoder + per-group heads + semantic bank.

Task-agnostic by construction: ``encode`` turns uint8 clips into multi-scale space-time features, ``decode``
segments whatever :class:`~vidseg.model.queries.QuerySet` a task builds. Nothing here names a task; tasks
register their query groups' heads (``decoder.add_group``) and vocabularies (``semantic_bank``) themselves.

Hydra builds it from ``conf/model/*.yaml``; ``neck`` is given as a partial (``_partial_: true``) and receives
the backbone's channel counts here, so the configs never repeat backbone widths.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn

from vidseg.model.backbone import TARVIS_PIXEL_MEAN, TARVIS_PIXEL_STD, Backbone, normalize_frames
from vidseg.model.decoder import DecoderOutput, MaskedAttentionDecoder, QueryAdder
from vidseg.model.neck import NeckOutput
from vidseg.model.queries import QuerySet, SemanticQueryBank

PRECISIONS: tuple[str, ...] = ("32", "bf16")


class TarViS(nn.Module):
    """Shared video-segmentation network.

    Args:
        backbone: a :class:`~vidseg.model.backbone.Backbone` (per-frame, strides 4–32).
        neck: the temporal neck module, or a factory called as ``neck(in_channels=backbone.channels)``.
        decoder: the :class:`~vidseg.model.decoder.MaskedAttentionDecoder`.
        vocabularies: initial semantic vocabularies {key: number of classes} (tasks may add more).
        groups: initial decoder head groups (tasks may add more).
        precision: "32" or "bf16" (autocast of encode/decode on the input's device; the neck's deformable
            attention runs in fp32 regardless).
        compile: ``torch.compile`` the backbone, neck and decoder in place (state-dict keys unchanged).
        size_divisibility: input H and W must be multiples of this (TarViS pads to 64 for the neck windows).
        pixel_mean, pixel_std: normalisation statistics on the 0–255 scale.
    """

    def __init__(
        self,
        backbone: Backbone,
        neck: nn.Module | Callable[..., nn.Module],
        decoder: MaskedAttentionDecoder,
        vocabularies: Mapping[str, int] | None = None,
        groups: Sequence[str] = (),
        precision: str = "32",
        compile: bool = False,
        size_divisibility: int = 64,
        pixel_mean: Sequence[float] = TARVIS_PIXEL_MEAN,
        pixel_std: Sequence[float] = TARVIS_PIXEL_STD,
    ) -> None:
        super().__init__()
        if str(precision) not in PRECISIONS:
            raise ValueError(f"TarViS: precision must be one of {PRECISIONS}, got {precision!r}")
        self.backbone = backbone
        self.neck = neck if isinstance(neck, nn.Module) else neck(in_channels=list(backbone.channels))
        self.decoder = decoder
        self.d_model = decoder.d_model
        self.mask_stride = int(getattr(self.neck, "mask_stride", 4))
        if self.mask_stride not in backbone.strides:
            raise ValueError(f"TarViS: the neck predicts masks at stride {self.mask_stride} but the backbone gives "
                             f"strides {backbone.strides} (set model.backbone.strides to include it)")
        neck_dim = getattr(self.neck, "d_model", self.d_model)
        if neck_dim != self.d_model:
            raise ValueError(f"TarViS: neck d_model {neck_dim} != decoder d_model {self.d_model}")
        self.semantic_bank = SemanticQueryBank(self.d_model, vocabularies)
        for name in groups:
            self.decoder.add_group(name)
        if vocabularies:
            self.decoder.add_group("semantic")
        self.precision = str(precision)
        self.size_divisibility = int(size_divisibility)
        self.pixel_mean = tuple(float(v) for v in pixel_mean)
        self.pixel_std = tuple(float(v) for v in pixel_std)
        self.compiled = False
        if compile:
            self.compile_submodules()

    # ------------------------------------------------------------------ switches
    def compile_submodules(self) -> None:
        """``torch.compile`` backbone, neck and decoder in place (``nn.Module.compile``; keys unchanged)."""
        for module in (self.backbone, self.neck, self.decoder):
            module.compile()
        self.compiled = True

    def autocast(self, device: torch.device) -> AbstractContextManager:
        """bf16 autocast on ``device`` when ``precision == "bf16"``, else a no-op context."""
        if self.precision == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return nullcontext()

    # ------------------------------------------------------------------ forward parts
    def encode(self, frames: Tensor, colour: Tensor | None = None, valid: Tensor | None = None) -> NeckOutput:
        """uint8 clips [B, T, 3, H, W] (H, W multiples of ``size_divisibility``) -> :class:`NeckOutput`.

        Frames are normalised on their own device (move them there as uint8); the backbone runs on B·T images.
        ``colour`` [B, 3, 4]: per-clip colour jitter (``Batch.colour``) applied to every frame of the clip on
        the ``valid`` [B, H, W] pixels (``Batch.pad_mask``) while normalising; see ``normalize_frames``.
        """
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"TarViS.encode expects frames [B, T, 3, H, W], got shape {tuple(frames.shape)}")
        b, t, _, h, w = frames.shape
        if h % self.size_divisibility or w % self.size_divisibility:
            raise ValueError(
                f"TarViS.encode: frame size {h}x{w} is not a multiple of {self.size_divisibility}; "
                f"pad bottom/right first (vidseg.model.backbone.pad_to_multiple)"
            )
        per_image_colour = per_image_valid = None
        if colour is not None:  # one map per clip -> one per frame
            if tuple(colour.shape) != (b, 3, 4):
                raise ValueError(f"TarViS.encode: colour must be [{b}, 3, 4], got {tuple(colour.shape)}")
            per_image_colour = colour[:, None].expand(b, t, 3, 4).reshape(b * t, 3, 4)
            if valid is not None:
                if tuple(valid.shape) != (b, h, w):
                    raise ValueError(f"TarViS.encode: valid must be [{b}, {h}, {w}], got {tuple(valid.shape)}")
                per_image_valid = valid[:, None].expand(b, t, h, w).reshape(b * t, h, w)
        images = normalize_frames(frames.reshape(b * t, 3, h, w), self.pixel_mean, self.pixel_std,
                                  colour=per_image_colour, valid=per_image_valid)
        with self.autocast(frames.device):
            return self.neck(self.backbone(images), t)

    def decode(
        self, feats: NeckOutput, query_set: QuerySet, query_adders: Mapping[str, QueryAdder] | None = None
    ) -> DecoderOutput:
        """Segment ``query_set`` in the encoded clip; see :class:`MaskedAttentionDecoder`."""
        with self.autocast(feats.mask_features.device):
            return self.decoder(feats.features, feats.mask_features, query_set, query_adders)

    def forward(self, frames: Tensor, query_set: QuerySet) -> DecoderOutput:
        """encode + decode in one call."""
        return self.decode(self.encode(frames), query_set)

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts per part and in total."""
        parts = {
            "backbone": self.backbone,
            "neck": self.neck,
            "decoder": self.decoder,
            "semantic_bank": self.semantic_bank,
        }
        counts = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts


def model_autocast(model: nn.Module, device: torch.device) -> AbstractContextManager:
    """``model.autocast(device)`` for a network that has one (TarViS: bf16 autocast when its precision is
    "bf16"); a no-op context for any other network, e.g. a stand-in with the same encode/decode interface."""
    autocast = getattr(model, "autocast", None)
    return autocast(device) if callable(autocast) else nullcontext()
