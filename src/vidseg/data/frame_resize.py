"""Flip, resize and pad training frames where they are, e.g. on the accelerator after the batch moved there.

With `data.resize_on_device` the data workers hand over each clip's crop at its decoded size together with what is
still to be done to it, `(h, w, H, W, flip)`: the valid crop `frames[..., :h, :w]` is mirrored when `flip`, resized
to H×W (bilinear with antialiasing, as `ClipTransform` does on the CPU) and placed top-left in the batch's padded
canvas. Why: the bilinear resize was the largest non-decode cost of a worker. For sources below about 600 px on the
short side the crop is also smaller than the resized frame it becomes (a 480p frame's 0.75 crop resized to a 448/512
short side is 1.5-2x fewer bytes to hand over and to copy to the device); from 720p up it is larger (1.1-1.5x at
720p, about 2.5x at 1080p), so there the workers save the resize's CPU time but hand over more bytes
(`data.resize_on_device: false` hands over the resized frames instead).

On the CPU the uint8 channels-last kernel is the one `ClipTransform` uses, so both paths give identical frames; on
other devices the resize runs in float32 and is rounded back to uint8 (within 1 of the CPU's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["resize_frames", "finish_frames"]


def resize_frames(frames: torch.Tensor, height: int, width: int, *, uint8_kernel: bool | None = None) -> torch.Tensor:
    """uint8 [T, 3, h, w] -> uint8 [T, 3, height, width] (bilinear, antialiased, half-pixel centres; channels-last
    memory). `uint8_kernel` (default: on the CPU) runs torch's uint8 kernel; otherwise float32, rounded back."""
    if uint8_kernel is None:
        uint8_kernel = frames.device.type == "cpu"
    if uint8_kernel:  # torch's uint8 kernel, on channels-last memory as decoders produce it
        x = frames.contiguous(memory_format=torch.channels_last)
        return F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    out = F.interpolate(frames.float(), size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8).contiguous(memory_format=torch.channels_last)


def finish_frames(frames: torch.Tensor, device_resize: torch.Tensor, size: tuple[int, int],
                  pad_value: int) -> torch.Tensor:
    """uint8 [B, T, 3, h', w'] crops -> uint8 [B, T, 3, H, W] frames on the same device.

    `device_resize` int [B, 5]: (h, w, out_h, out_w, flip) per clip; `size` = (H, W) the padded canvas (the batch's
    `pad_mask` size); pixels outside each clip's out_h×out_w are `pad_value`."""
    b, t, c, fh, fw = frames.shape
    height, width = size
    spec = device_resize.tolist()
    if len(spec) != b or any(len(row) != 5 for row in spec):
        raise ValueError(f"finish_frames: device_resize must be [{b}, 5], got {tuple(device_resize.shape)}")
    out = torch.full((b, t, height, width, c), pad_value, dtype=frames.dtype, device=frames.device)
    out = out.permute(0, 1, 4, 2, 3)
    for k, (h, w, out_h, out_w, flip) in enumerate(spec):
        if not (0 < h <= fh and 0 < w <= fw and 0 < out_h <= height and 0 < out_w <= width):
            raise ValueError(f"finish_frames: clip {k}: crop {h}x{w} of frames {fh}x{fw} resized to {out_h}x{out_w} "
                             f"does not fit the {height}x{width} canvas")
        x = frames[k, :, :, :h, :w]
        if flip:
            x = x.flip(-1)
        if (out_h, out_w) != (h, w):
            x = resize_frames(x, out_h, out_w)
        out[k, :, :, :out_h, :out_w] = x
    return out
