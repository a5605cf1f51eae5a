"""Clip-consistent training transforms on uint8 tensors (TarViS parity ranges, reference/tarvis.md §5).

One set of random parameters is drawn per clip and applied to every frame, mask, semantic map and point:
colour jitter (hue/saturation, contrast, brightness), horizontal flip, a random crop that keeps targets,
a resize (short side drawn from `min_dims`, long side ≤ `max_dim`) and bottom/right padding to a multiple
of 64. Frames stay uint8 (normalisation happens on the device, in the model).

Colour jitter on the device (default, `colour_on_device=True`): the transform only *draws* the clip's jitter
and returns it as a 3×4 affine map (`TransformedClip.colour`, carried by `ClipSample.colour` and
`Batch.colour`); the model applies it to the valid pixels while turning uint8 into normalised floats
(`vidseg.model.backbone.normalize_frames`). The map is affine and bilinear resizing is linear with weights
summing to 1, so jittering after the resize equals jittering before it up to uint8 rounding and clipping at
0/255. `colour_on_device=False` applies it here instead (PIL's C colour-matrix conversion, as before).

Resize on the device (`resize_on_device=True`, set by the training datamodule's `data.resize_on_device`): in
training the transform returns the unflipped crop as it is (a view of the decoded frames) and
`TransformedClip.device_resize` = (h, w, H, W, flip); the collate copies the crop once into the batch, and
`Batch.to(device)` flips, resizes and pads it there (`vidseg.data.frame_resize`), bit-identical to this transform
on the CPU. The worker saves the resize and hands over the smaller crop. Targets are resized here; RLE masks of
clips that need no prompt points can come back as rectangles (`masks_as_rects`, painted by `Batch.to`).

Speed: the crop and flip are taken first (one copy of the cropped pixels), frames are resized with torch's
uint8 channels-last bilinear kernel, and masks/semantic maps are resized by one nearest-neighbour gather
whose indices contain crop and flip. Target bounding boxes may be given (e.g. from the RLEs, without
decoding) instead of being computed from the masks.

Colour jitter model: TarViS uses imgaug (AddToHueAndSaturation ±12, LinearContrast 0.95–1.05 around 128,
Add ±25). Here hue is a rotation of RGB about the grey axis by δ/255·360° (δ ∈ ±12), saturation scales the
chroma by 1 + δ'/128 (δ' ∈ ±12), contrast α and brightness β act as 128 + α(v − 128) + β. The four compose
into one 3×4 affine map per clip, which is exact for hue rotation of grey-axis chroma and for contrast and
brightness, and close to imgaug's HSV arithmetic at these small ranges.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

from vidseg.data.frame_resize import resize_frames
from vidseg.data.records import IGNORE_LABEL, PAD_VALUE
from vidseg.data.rle_masks import RLEClipMasks
from vidseg.data.target_resize import _gather, _has_pixels_in, _nearest_index, _resize_masks, mask_boxes

__all__ = ["ClipTransform", "TransformedClip", "colour_matrix", "resize_shape"]


@dataclass
class TransformedClip:
    """Output of ClipTransform. `keep` indexes the input targets that remain (ascending, so order is kept)."""

    frames: torch.Tensor  # uint8 [T, 3, Hp, Wp]
    masks: torch.Tensor  # bool [K, T, Hp, Wp]
    pad_mask: torch.Tensor  # bool [Hp, Wp], True on valid pixels
    keep: torch.Tensor  # int64 [K]
    semantic: torch.Tensor | None = None  # int64 [T, Hp, Wp]
    points: torch.Tensor | None = None  # float32 [K, 2] (x, y)
    colour: torch.Tensor | None = None  # float32 [3, 4] (M | b) colour jitter still to apply (on the device)
    flipped: bool = False
    crop: tuple[int, int, int, int] = (0, 0, 0, 0)  # y0, x0, h, w in input pixels
    size: tuple[int, int] = (0, 0)  # valid (unpadded) H, W
    # resize_on_device: frames hold the unflipped crop [T, 3, h, w]; (h, w, H, W, flip) is what the device does
    device_resize: tuple[int, int, int, int, bool] | None = None
    mask_rects: torch.Tensor | None = None  # int32 [R, 5] (k * T + t, i0, i1, j0, j1): masks still to be painted


def resize_shape(height: int, width: int, short: int, max_dim: int) -> tuple[int, int]:
    """(H, W) with short side `short` unless that makes the long side exceed `max_dim`."""
    scale = min(short / min(height, width), max_dim / max(height, width))
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def colour_matrix(hue: float, saturation: float, contrast: float, brightness: float) -> tuple[np.ndarray,
                                                                                          np.ndarray]:
    """Affine colour map (M [3, 3], b [3]) for RGB in 0..255: hue rotation by `hue` degrees about the
    grey axis, chroma scaled by `saturation`, then 128 + contrast·(v − 128) + brightness."""
    theta = math.radians(hue)
    axis = np.full(3, 1.0 / math.sqrt(3.0))
    cross = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    grey = np.outer(axis, axis)  # projection onto the grey axis
    rotation = math.cos(theta) * np.eye(3) + math.sin(theta) * cross + (1.0 - math.cos(theta)) * grey
    chroma = grey + saturation * (rotation - grey)
    matrix = contrast * chroma
    bias = np.full(3, 128.0 * (1.0 - contrast) + brightness)
    return matrix.astype(np.float32), bias.astype(np.float32)


def _pil_crop(frame: np.ndarray, box: tuple[int, int, int, int]) -> Image.Image:
    """PIL image of frame[y0:y0+h, x0:x0+w] (uint8 [H, W, 3]); for a contiguous frame PIL's raw decoder
    reads the crop rows straight from the array's memory (the one copy PIL needs anyway)."""
    y0, x0, h, w = box
    if frame.flags.c_contiguous:
        start = (y0 * frame.shape[1] + x0) * 3
        return Image.frombuffer("RGB", (w, h), frame.reshape(-1)[start:], "raw", "RGB", frame.strides[0], 1)
    return Image.fromarray(np.ascontiguousarray(frame[y0 : y0 + h, x0 : x0 + w]))


def crop_flip_colour(
    frames: torch.Tensor, box: tuple[int, int, int, int], flip: bool, matrix: np.ndarray | None,
    bias: np.ndarray | None,
) -> torch.Tensor:
    """Crop, flip and colour-map uint8 frames [T, 3, H, W] -> uint8 [T, 3, h, w] in channels-last memory.

    Runs on the interleaved (H, W, 3) pixels, as decoders produce them. Without colour map, one copy of the
    cropped pixels, flipped by torch; with one, PIL crops while importing, flips, and applies the affine
    colour conversion (`Image.convert("RGB", matrix)`, C code that rounds and clips)."""
    y0, x0, h, w = box
    hwc = frames.permute(0, 2, 3, 1).numpy()
    if matrix is None:
        cropped = torch.from_numpy(np.ascontiguousarray(hwc[:, y0 : y0 + h, x0 : x0 + w]))
        # torch's flip copies whole pixels; numpy's reversed-stride copy of 3-byte pixels is ~6x slower
        return (cropped.flip(2) if flip else cropped).permute(0, 3, 1, 2)
    affine = tuple(float(v) for row, b in zip(matrix, bias, strict=True) for v in (*row, b))
    out = np.empty((hwc.shape[0], h, w, 3), dtype=np.uint8)
    for k, frame in enumerate(hwc):
        image = _pil_crop(frame, box)
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out[k] = np.asarray(image.convert("RGB", affine))
    return torch.from_numpy(out).permute(0, 3, 1, 2)


class ClipTransform:
    """Clip-consistent augmentation + resize + pad, on uint8 frame tensors.

    train=True: colour jitter, flip (p=`flip_p`), a crop of `crop_fraction` (h, w) of the frame that keeps
    target pixels (up to `crop_retries` draws, else no crop), resize with the short side drawn from
    `min_dims`. `scale_from="crop"` (VIS/VPS/VSS) resizes the crop to that short side; `"image"` (VOS:
    TarViS resizes the full frame, then crops) scales by the full frame's factor, so the crop comes out at
    `crop_fraction` of the resized frame. train=False: resize to the largest of `min_dims` and pad only.
    """

    def __init__(
        self,
        *,
        train: bool = True,
        min_dims: Sequence[int] = (448, 512),
        max_dim: int = 1024,
        crop_fraction: Sequence[float] | None = (0.75, 0.75),
        flip_p: float = 0.5,
        hue_saturation: float = 12.0,
        contrast: Sequence[float] = (0.95, 1.05),
        brightness: float = 25.0,
        scale_from: Literal["crop", "image"] = "crop",
        crop_retries: int = 5,
        pad_multiple: int = 64,
        colour_on_device: bool = True,
        resize_on_device: bool = False,
    ) -> None:
        if not min_dims:
            raise ValueError("min_dims must list at least one short-side size")
        if crop_fraction is not None and not all(0.0 < f <= 1.0 for f in crop_fraction):
            raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
        if scale_from not in ("crop", "image"):
            raise ValueError(f"scale_from must be 'crop' or 'image', got {scale_from!r}")
        self.train = train
        self.min_dims = [int(d) for d in min_dims]
        self.max_dim = int(max_dim)
        self.crop_fraction = None if crop_fraction is None else (float(crop_fraction[0]), float(crop_fraction[1]))
        self.flip_p = float(flip_p)
        self.hue_saturation = float(hue_saturation)
        self.contrast = (float(contrast[0]), float(contrast[1]))
        self.brightness = float(brightness)
        self.scale_from = scale_from
        self.crop_retries = int(crop_retries)
        self.pad_multiple = int(pad_multiple)
        self.colour_on_device = bool(colour_on_device)
        self.resize_on_device = bool(resize_on_device)

    # ------------------------------------------------------------------ parameter draws
    def _draw_crop(
        self, masks: np.ndarray | RLEClipMasks, boxes: np.ndarray, height: int, width: int,
        reference_frame: int | None, rng: np.random.Generator,
    ) -> tuple[int, int, int, int]:
        if self.crop_fraction is None:
            return 0, 0, height, width
        ch = max(1, int(round(self.crop_fraction[0] * height)))
        cw = max(1, int(round(self.crop_fraction[1] * width)))
        if (ch, cw) == (height, width):
            return 0, 0, height, width
        n, t = boxes.shape[:2]
        flat_boxes = boxes.reshape(-1, 4)
        if reference_frame is not None:  # VOS: every non-empty prompt mask must survive the crop
            present = np.arange(n) * t + reference_frame
            present = present[flat_boxes[present, 1] > flat_boxes[present, 0]]
        else:  # any target in any frame
            present = np.arange(n * t)
        dense = None
        if not isinstance(masks, RLEClipMasks):
            dense = masks.reshape(-1, height, width)
            dense = dense if reference_frame is None else dense[present]
        for _ in range(self.crop_retries):
            y0 = int(rng.integers(0, height - ch + 1))
            x0 = int(rng.integers(0, width - cw + 1))
            if present.shape[0] == 0:
                return y0, x0, ch, cw
            window = (y0, y0 + ch, x0, x0 + cw)
            if dense is None:
                inside = masks.has_pixels_in(present, window)
            else:
                inside = _has_pixels_in(dense, flat_boxes[present], window)
            if inside.all() if reference_frame is not None else inside.any():
                return y0, x0, ch, cw
        return 0, 0, height, width

    # ------------------------------------------------------------------ main entry
    def __call__(
        self,
        frames: torch.Tensor,
        masks: torch.Tensor | RLEClipMasks,
        *,
        rng: np.random.Generator,
        semantic: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        reference_frame: int | None = None,
        boxes: np.ndarray | None = None,
        masks_as_rects: bool = False,
    ) -> TransformedClip:
        """Transform one clip. frames uint8 [T, 3, H, W] (any memory format), masks bool [N, T, H, W] (any
        strides; or the same as `RLEClipMasks`, never decoded at full size), semantic integer [T, H, W], points
        float [N, 2] (x, y), boxes: the masks' exact bounding
        boxes int [N, T, 4] (top, bottom, left, right; ends exclusive; zeros when empty), computed from the
        masks when not given. `reference_frame` (VOS/PET): the crop keeps every target's mask in that frame
        and targets are dropped when empty *there*; otherwise a target is dropped when empty in every frame.
        `masks_as_rects` (with `resize_on_device` in training and RLE masks): the resized masks come back as
        rectangles (`TransformedClip.mask_rects`, painted on the device) and `masks` is [K, T, 0, 0]."""
        if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be uint8 [T, 3, H, W], got {frames.dtype} {tuple(frames.shape)}")
        t, _, height, width = frames.shape
        rle = isinstance(masks, RLEClipMasks)
        if rle and tuple(masks.shape[1:]) != (t, height, width):
            raise ValueError(f"masks must be [N, {t}, {height}, {width}], got RLE masks {masks.shape}")
        if not rle and (masks.dtype != torch.bool or masks.dim() != 4
                        or tuple(masks.shape[1:]) != (t, height, width)):
            raise ValueError(f"masks must be bool [N, {t}, {height}, {width}], got {masks.dtype} "
                             f"{tuple(masks.shape)}")
        if semantic is not None and tuple(semantic.shape) != (t, height, width):
            raise ValueError(f"semantic must be [{t}, {height}, {width}], got {tuple(semantic.shape)}")
        if points is not None and tuple(points.shape) != (masks.shape[0], 2):
            raise ValueError(f"points must be [{masks.shape[0]}, 2], got {tuple(points.shape)}")

        mask_array = masks if rle else masks.numpy()
        if boxes is None and rle:
            raise ValueError("RLE masks need their boxes")
        if boxes is None:
            boxes = mask_boxes(mask_array)
        elif boxes.shape != (*masks.shape[:2], 4):
            raise ValueError(f"boxes must be [{masks.shape[0]}, {t}, 4], got {tuple(boxes.shape)}")
        else:
            boxes = np.asarray(boxes, dtype=np.int64)
        if self.train:
            flip = bool(rng.random() < self.flip_p)
            short = int(self.min_dims[int(rng.integers(len(self.min_dims)))])
            y0, x0, ch, cw = self._draw_crop(mask_array, boxes, height, width, reference_frame, rng)
            hs = self.hue_saturation
            matrix, bias = colour_matrix(
                hue=float(rng.uniform(-hs, hs)) / 255.0 * 360.0,
                saturation=1.0 + float(rng.uniform(-hs, hs)) / 128.0,
                contrast=float(rng.uniform(*self.contrast)),
                brightness=float(rng.uniform(-self.brightness, self.brightness)),
            )
        else:
            flip, short = False, max(self.min_dims)
            y0, x0, ch, cw = 0, 0, height, width
            matrix = bias = None

        if self.scale_from == "image":
            full_h, full_w = resize_shape(height, width, short, self.max_dim)
            out_h, out_w = max(1, round(ch * full_h / height)), max(1, round(cw * full_w / width))
        else:
            out_h, out_w = resize_shape(ch, cw, short, self.max_dim)
        pad_h = -(-out_h // self.pad_multiple) * self.pad_multiple
        pad_w = -(-out_w // self.pad_multiple) * self.pad_multiple

        colour = None
        if matrix is not None and self.colour_on_device:
            colour = torch.from_numpy(np.concatenate([matrix, bias[:, None]], axis=1))
            matrix = bias = None

        device_resize = None
        if self.train and self.resize_on_device:  # the crop as it is; flip, resize and pad happen on the device
            device_resize = (ch, cw, out_h, out_w, flip)
            if matrix is None:  # a view: the collate copies it once, into the hand-over
                out_frames = frames[:, :, y0 : y0 + ch, x0 : x0 + cw]
            else:
                out_frames = crop_flip_colour(frames, (y0, x0, ch, cw), False, matrix, bias)
        else:
            # Frames: crop + flip (one copy) -> colour (unless on the device) -> resize -> pad, all uint8,
            # channels-last memory.
            pix = crop_flip_colour(frames, (y0, x0, ch, cw), flip, matrix, bias)
            if (out_h, out_w) != (ch, cw):
                pix = resize_frames(pix, out_h, out_w)
            out_frames = torch.full((t, pad_h, pad_w, 3), PAD_VALUE, dtype=torch.uint8).permute(0, 3, 1, 2)
            out_frames[:, :, :out_h, :out_w] = pix

        # Masks / semantic: one nearest gather with crop and flip folded into the indices.
        rows = _nearest_index(ch, out_h, y0, False)
        cols = _nearest_index(cw, out_w, x0, flip)
        mask_rects = None
        if rle and masks_as_rects and device_resize is not None:  # painted on the device (`data.mask_rects`)
            rects, nonempty = mask_array.resize_rects(rows, cols)
        else:
            padded = torch.zeros((masks.shape[0], t, pad_h, pad_w), dtype=torch.bool)
            if rle:
                nonempty = mask_array.resize_into(rows, cols, padded.numpy())  # bool [N, T]
            else:
                nonempty = _resize_masks(mask_array, boxes, rows, cols, padded.numpy())
        # (numpy: on these few elements each torch call costs more than the work)
        kept_np = nonempty[:, reference_frame] if reference_frame is not None else nonempty.any(1)
        keep_np = np.flatnonzero(kept_np).astype(np.int64, copy=False)
        keep = torch.from_numpy(keep_np)
        if rle and masks_as_rects and device_resize is not None:
            target = np.full(masks.shape[0], -1, np.int64)  # kept targets renumbered
            target[keep_np] = np.arange(len(keep_np))
            new = target[rects[:, 0] // t]
            survives = new >= 0
            rects = rects[survives]
            rects[:, 0] = new[survives] * t + rects[:, 0] % t
            mask_rects = torch.from_numpy(rects)
            out_masks = torch.zeros((len(keep_np), t, 0, 0), dtype=torch.bool)  # shape only, until painted
        else:
            out_masks = padded if keep.numel() == masks.shape[0] else padded[keep]

        out_sem = None
        if semantic is not None:
            out_sem = torch.full((t, pad_h, pad_w), IGNORE_LABEL, dtype=torch.int64)
            out_sem[:, :out_h, :out_w] = torch.from_numpy(_gather(semantic.numpy(), rows, cols))

        out_points = None
        if points is not None:
            pts = points[keep].to(torch.float32).clone()
            pts[:, 0] = (pts[:, 0] - x0 + 0.5) * (out_w / cw) - 0.5
            pts[:, 1] = (pts[:, 1] - y0 + 0.5) * (out_h / ch) - 0.5
            if flip:
                pts[:, 0] = out_w - 1 - pts[:, 0]
            out_points = pts

        pad_mask = torch.zeros((pad_h, pad_w), dtype=torch.bool)
        pad_mask[:out_h, :out_w] = True
        return TransformedClip(
            frames=out_frames, masks=out_masks, pad_mask=pad_mask, keep=keep, semantic=out_sem,
            points=out_points, colour=colour, flipped=flip, crop=(y0, x0, ch, cw), size=(out_h, out_w),
            device_resize=device_resize, mask_rects=mask_rects,
        )

    def __repr__(self) -> str:
        return (f"ClipTransform(train={self.train}, min_dims={self.min_dims}, max_dim={self.max_dim}, "
                f"crop_fraction={self.crop_fraction}, scale_from={self.scale_from!r}, "
                f"colour_on_device={self.colour_on_device}, resize_on_device={self.resize_on_device})")
