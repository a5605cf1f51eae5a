"""Mask overlays of validation predictions for the loggers: a frame strip (image) and a short GIF per video,
keyed `val_media/<task>/<dataset>/<video>`.

Colours: one per track id (VIS/VOS/PET, VPS things), per class (VSS, VPS stuff), from a fixed hash of the id,
so the same track keeps its colour across frames and the same class across videos.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vidseg.data.records import IGNORE_LABEL, VideoPrediction

log = logging.getLogger(__name__)

GOLDEN = 0.618033988749895


def id_colours(ids: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] colour of every integer id: hue = frac(id · golden ratio), fixed saturation/value."""
    hue = np.mod(ids.astype(np.float64) * GOLDEN + 0.1, 1.0)
    sat, val = 0.75, 0.95
    h6 = hue * 6.0
    sector = np.floor(h6).astype(np.int64) % 6
    frac = h6 - np.floor(h6)
    p = np.full_like(hue, val * (1 - sat))
    q, t = val * (1 - sat * frac), val * (1 - sat * (1 - frac))
    v = np.full_like(hue, val)
    table = np.stack(
        [np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))], 0
    )  # [6, ..., 3]
    rgb = np.take_along_axis(table, sector[None, ..., None].repeat(3, -1), 0)[0]
    return np.round(rgb * 255).astype(np.uint8)


def prediction_id_maps(pred: VideoPrediction, max_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 [T, H, W], valid bool [T, H, W]) of a prediction at its original size: panoptic maps
    (class·2^20 + instance) when present, else track ids pasted over the semantic map (class ids offset so
    they do not share colours with tracks). Pixels with no prediction are invalid."""
    n = len(pred.frame_names) if max_frames is None else min(max_frames, len(pred.frame_names))
    shape = (n, pred.height, pred.width)
    ids = np.zeros(shape, dtype=np.int64)
    valid = np.zeros(shape, dtype=bool)
    for t in range(n):
        if pred.panoptic_maps is not None:
            sem, inst = pred.panoptic_maps[t]
            ids[t] = sem.astype(np.int64) * (1 << 20) + inst.astype(np.int64)
            valid[t] = sem != IGNORE_LABEL
            continue
        if pred.semantic_maps is not None:
            sem = pred.semantic_maps[t].astype(np.int64)
            ids[t] = sem + (1 << 30)
            valid[t] = sem != IGNORE_LABEL
        if pred.tracks:
            inst = pred.instance_map(t)
            ids[t] = np.where(inst > 0, inst, ids[t])
            valid[t] |= inst > 0
    return ids, valid


def overlay_video(frames: torch.Tensor, valid_hw: tuple[int, int], pred: VideoPrediction, alpha: float = 0.5,
                  max_frames: int = 16) -> np.ndarray:
    """uint8 [T, h, w, 3]: the EvalVideo frames (uint8 [T, 3, Hp, Wp], padding cropped to `valid_hw`) blended
    with the prediction's colours (id maps resized to the frames with nearest neighbour)."""
    h, w = valid_hw
    ids, valid = prediction_id_maps(pred, max_frames)
    t = ids.shape[0]
    if frames.shape[0] < t:
        raise ValueError(f"overlay_video: {pred.video_id} has {t} predicted frames but {frames.shape[0]} images")
    rgb = frames[:t, :, :h, :w].permute(0, 2, 3, 1).cpu().numpy()
    if ids.shape[1:] != (h, w):
        stacked = torch.from_numpy(np.stack([ids, valid.astype(np.int64)], 1)).double()
        stacked = F.interpolate(stacked, size=(h, w), mode="nearest").long().numpy()
        ids, valid = stacked[:, 0], stacked[:, 1].astype(bool)
    uniq, inverse = np.unique(ids, return_inverse=True)
    colours = id_colours(uniq)[inverse.reshape(ids.shape)].astype(np.float32)
    blend = np.where(valid[..., None], (1 - alpha) * rgb.astype(np.float32) + alpha * colours, rgb)
    return np.round(blend).clip(0, 255).astype(np.uint8)


def frame_strip(frames: np.ndarray, max_frames: int = 4) -> np.ndarray:
    """uint8 [h, w·k, 3]: up to `max_frames` frames evenly spread over the video, side by side."""
    pick = np.unique(np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int))
    return np.concatenate(list(frames[pick]), axis=1)


def write_gif(frames: np.ndarray, path: Path, fps: float = 4.0) -> Path:
    """Animated GIF of uint8 [T, h, w, 3] frames (PIL; no video encoder needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path


def log_overlays(loggers: list[Any], key: str, overlay: np.ndarray, step: int, media_dir: Path) -> dict[str, Any]:
    """Send one video's overlay to every logger: W&B gets an image (frame strip) and a GIF, TensorBoard the
    image, every logger's files land in `media_dir` (PNG + GIF) so CSV users have them too. Returns what was
    written ({"image": path, "gif": path})."""
    safe = key.replace("/", "__")
    strip = frame_strip(overlay)
    png = media_dir / f"{safe}__step{step:07d}.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(strip).save(png)
    gif = write_gif(overlay, media_dir / f"{safe}__step{step:07d}.gif")
    for logger in loggers:
        kind = type(logger).__name__
        if kind == "WandbLogger":
            import wandb

            logger.experiment.log(
                {f"{key}/frames": wandb.Image(strip), f"{key}/clip": wandb.Video(str(gif), format="gif"),
                 "trainer/global_step": step}
            )
        elif kind == "TensorBoardLogger":
            logger.experiment.add_image(key, strip, global_step=step, dataformats="HWC")
    return {"image": png, "gif": gif}
