"""2D image backbones from timm, returning the stride-4/8/16/32 feature maps in NCHW (optionally also stride 2,
for a neck that predicts masks at stride 2).

Frames of a clip run independently as a batch of (B*T) images. Channel counts and strides are read from
timm's ``feature_info``; nothing about a model's widths is hard-coded here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.layers import freeze_batch_norm_2d
from torch import Tensor, nn

from vidseg.data.records import MissingFileError

# TarViS normalisation (0-255 scale, RGB; tarvis.md §5). These are the ImageNet statistics times 255, so
# ConvNeXt's "0-1 scale with ImageNet statistics" is the same transform.
TARVIS_PIXEL_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
TARVIS_PIXEL_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)

WANTED_STRIDES: tuple[int, ...] = (4, 8, 16, 32)
ALLOWED_STRIDES: tuple[tuple[int, ...], ...] = (WANTED_STRIDES, (2, *WANTED_STRIDES))

# Short names used in configs -> timm model names. Any other timm name is accepted verbatim.
BACKBONE_ALIASES: dict[str, str] = {
    "tiny": "test_resnet",
    "resnet50": "resnet50",
    "resnet101": "resnet101",
    "swin_t": "swin_tiny_patch4_window7_224",
    "swin_b": "swin_base_patch4_window12_384",
    "swin_l": "swin_large_patch4_window12_384",
    "convnext_t": "convnext_tiny",
    "convnext_b": "convnext_base",
    "convnext_l": "convnext_large",
}


def normalize_frames(
    frames: Tensor,
    mean: Sequence[float] = TARVIS_PIXEL_MEAN,
    std: Sequence[float] = TARVIS_PIXEL_STD,
    colour: Tensor | None = None,
    valid: Tensor | None = None,
) -> Tensor:
    """uint8 (or float 0-255) frames [..., 3, H, W] -> float32 ``(x - mean) / std`` on the frames' device.

    Frames stay uint8 until they reach the accelerator; this is the one place they become float. ``colour``
    [..., 3, 4] (leading dims as the frames'): a per-image affine colour map (M | b) on the 0-255 scale, the
    training colour jitter drawn by ``vidseg.data.transforms.ClipTransform``; ``M @ rgb + b`` is clamped to
    0..255 before normalising. ``valid`` [..., H, W] bool limits it to the valid pixels (padding stays as
    it was, like jitter applied before padding).
    """
    if frames.dim() < 3 or frames.shape[-3] != 3:
        raise ValueError(f"normalize_frames expects [..., 3, H, W] frames, got shape {tuple(frames.shape)}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got mean={list(mean)} std={list(std)}")
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=frames.device).view(3, 1, 1)
    inv_std = 1.0 / torch.as_tensor(std, dtype=torch.float32, device=frames.device).view(3, 1, 1)
    pixels = frames.float()
    if colour is not None:
        lead = tuple(frames.shape[:-3])
        if tuple(colour.shape) != (*lead, 3, 4):
            raise ValueError(f"normalize_frames: colour must be {[*lead, 3, 4]} for frames {tuple(frames.shape)}, "
                             f"got {tuple(colour.shape)}")
        colour = colour.to(device=frames.device, dtype=torch.float32)
        mapped = torch.einsum("...ij,...jhw->...ihw", colour[..., :3], pixels) + colour[..., 3, None, None]
        mapped = mapped.clamp_(0.0, 255.0)
        if valid is not None:
            if tuple(valid.shape) != (*lead, *frames.shape[-2:]):
                raise ValueError(f"normalize_frames: valid must be {[*lead, *frames.shape[-2:]]}, got "
                                 f"{tuple(valid.shape)}")
            mapped = torch.where(valid.to(frames.device).unsqueeze(-3), mapped, pixels)
        pixels = mapped
    return (pixels - mean_t) * inv_std


def pad_to_multiple(frames: Tensor, multiple: int = 64, value: float = 128.0) -> Tensor:
    """Pad [..., H, W] at the bottom/right to a multiple of ``multiple`` with ``value`` (TarViS: 128 before
    normalisation). Returns the input unchanged when no padding is needed."""
    height, width = frames.shape[-2:]
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return frames
    lead = frames.shape[:-2]
    flat = frames.reshape(-1, 1, height, width)
    if flat.dtype == torch.uint8:  # F.pad's constant mode supports uint8, but keep the fill value exact
        value = float(int(value))
    padded = F.pad(flat, (0, pad_w, 0, pad_h), mode="constant", value=value)
    return padded.reshape(*lead, height + pad_h, width + pad_w)


def _resolve_name(name: str) -> str:
    return BACKBONE_ALIASES.get(name, name)


def _is_swin(timm_name: str) -> bool:
    return timm_name.startswith("swin")


def _probe_out_indices(timm_name: str, extra_kwargs: dict, wanted: Sequence[int] = WANTED_STRIDES) -> tuple[int, ...]:
    """Indices of the ``wanted`` strides' features of ``timm_name``, found on the meta device (no memory)."""
    with torch.device("meta"):
        probe = timm.create_model(timm_name, features_only=True, pretrained=False, **extra_kwargs)
    reductions = probe.feature_info.reduction()
    indices = []
    for stride in wanted:
        if stride not in reductions:
            raise ValueError(
                f"backbone {timm_name!r} has no stride-{stride} feature map (timm reductions: {reductions}); "
                f"vidseg needs strides {tuple(wanted)}"
            )
        indices.append(reductions.index(stride))
    return tuple(indices)


class Backbone(nn.Module):
    """timm ``features_only`` wrapper: [N, 3, H, W] normalised frames -> [C4, C8, C16, C32] NCHW maps.

    Args:
        name: a timm model name or an alias from ``BACKBONE_ALIASES`` ("tiny", "resnet50", "swin_t", ...).
        pretrained: load timm's pretrained weights (network!); default False.
        pretrained_file: local ``.safetensors``/``.pth`` with the full timm model's state dict.
        frozen_bn: convert every BatchNorm2d to torchvision ``FrozenBatchNorm2d`` (TarViS ResNet setting).
        drop_path_rate: stochastic depth (TarViS Swin: 0.3).
        out_indices: timm feature indices; default: those with ``strides``.
        strides: the output strides, (4, 8, 16, 32) or (2, 4, 8, 16, 32) (a stride-2 mask-feature neck).
        model_kwargs: any further ``timm.create_model`` keyword arguments.
    """

    def __init__(
        self,
        name: str = "tiny",
        pretrained: bool = False,
        pretrained_file: str | None = None,
        frozen_bn: bool = False,
        drop_path_rate: float = 0.0,
        out_indices: Sequence[int] | None = None,
        model_kwargs: dict | None = None,
        strides: Sequence[int] = WANTED_STRIDES,
    ) -> None:
        super().__init__()
        wanted = tuple(int(s) for s in strides)
        if wanted not in ALLOWED_STRIDES:
            raise ValueError(f"backbone strides must be one of {list(ALLOWED_STRIDES)}, got {list(strides)}")
        timm_name = _resolve_name(name)
        kwargs: dict = dict(model_kwargs or {})
        if drop_path_rate > 0:
            kwargs["drop_path_rate"] = drop_path_rate
        if _is_swin(timm_name):
            kwargs.setdefault("strict_img_size", False)  # accept any (padded) input size
        if out_indices is None:
            out_indices = _probe_out_indices(timm_name, kwargs, wanted)
        load_pretrained = bool(pretrained)
        if pretrained_file is not None:
            path = Path(pretrained_file).expanduser()
            if not path.is_file():
                raise MissingFileError(f"backbone pretrained_file not found: {path} (backbone {timm_name!r})")
            kwargs["pretrained_cfg_overlay"] = dict(file=str(path))
            load_pretrained = True
        self.timm_name = timm_name
        self.body = timm.create_model(
            timm_name, features_only=True, pretrained=load_pretrained, out_indices=tuple(out_indices),
            **kwargs,
        )
        if frozen_bn:
            self.body = freeze_batch_norm_2d(self.body)
        fmt = getattr(self.body, "output_fmt", "NCHW")
        self.channels_last_output = str(getattr(fmt, "value", fmt)) == "NHWC"
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.strides: list[int] = list(self.body.feature_info.reduction())
        if self.strides != list(wanted):
            raise ValueError(
                f"backbone {timm_name!r} with out_indices={tuple(out_indices)} gives strides {self.strides}, "
                f"expected {list(wanted)}"
            )

    @property
    def size_divisibility(self) -> int:
        """Input H and W should be multiples of this (the coarsest stride)."""
        return max(self.strides)

    def forward(self, frames: Tensor) -> list[Tensor]:
        """[N, 3, H, W] normalised float frames -> the ``strides`` maps, each [N, C_i, H/s, W/s].

        Maps are dense, in NCHW or channels_last memory format (Swin, ConvNeXt), as timm produces them."""
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"Backbone expects [N, 3, H, W] frames, got shape {tuple(frames.shape)}")
        if not frames.is_floating_point():
            raise ValueError("Backbone expects float frames; call normalize_frames on uint8 frames first")
        features = self.body(frames)
        if self.channels_last_output:
            # a channels_last-strided NCHW view: dense, and convolutions consume it without a copy
            features = [f.permute(0, 3, 1, 2) for f in features]
        return list(features)
