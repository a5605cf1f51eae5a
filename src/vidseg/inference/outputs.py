"""What `vidseg.predict` writes for a user's video, frame by frame (memory bounded by one chunk of frames):

- `masks/<frame>.png`: index PNG (DAVIS palette) of track ids for VOS/PET/VIS; for VPS an RGB PNG with
  R = semantic class id, G = instance id // 256, B = instance id % 256 (the KITTI-STEP layout); for VSS a
  grey PNG of class ids (16-bit when an id exceeds 255).
- `tracks.json`: video facts + per track {id, category_id, category, score, masks: per-frame RLE or null};
  VSS/VPS also list `segments`: per class present, its per-frame RLE.
- `overlay.mp4`: the frames with the labels blended in; `preview.gif`: a few overlay frames, downscaled.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from vidseg.data.formats.common import davis_palette, encode_rle, write_index_png, write_json_atomic
from vidseg.data.records import Category, VideoPrediction, VideoRecord

PALETTE = np.array(davis_palette(), dtype=np.uint8).reshape(256, 3)


def label_maps(pred: VideoPrediction, task: str) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Per frame (instance/track id map int32, semantic map int32 or None), decoded one frame at a time."""
    for t in range(len(pred.frame_names)):
        sem = None
        if pred.semantic_maps is not None:
            sem = np.array(pred.semantic_maps[t], dtype=np.int32)
        inst = pred.instance_map(t) if pred.tracks else np.zeros((pred.height, pred.width), np.int32)
        if sem is not None and pred.tracks:
            cls = {trk.track_id: trk.category_id for trk in pred.tracks}
            for tid in np.unique(inst[inst > 0]).tolist():
                if cls.get(tid) is not None:
                    sem[inst == tid] = cls[tid]
        yield inst, sem


def colorize(inst: np.ndarray, sem: np.ndarray | None, colors: dict[int, tuple[int, int, int]]) -> np.ndarray:
    """uint8 [H, W, 3] colours: tracks by the palette of their id, other pixels by their class colour."""
    rgb = np.zeros((*inst.shape, 3), dtype=np.uint8)
    if sem is not None and colors:
        lut = np.zeros((max(max(colors), int(sem.max(initial=0))) + 1, 3), dtype=np.uint8)
        for cid, col in colors.items():
            lut[cid] = col
        rgb = lut[np.clip(sem, 0, len(lut) - 1)]
    return np.where((inst > 0)[..., None], PALETTE[inst % 256], rgb)


def class_colors(categories: list[Category]) -> dict[int, tuple[int, int, int]]:
    return {c.id: c.color or tuple(int(v) for v in PALETTE[(c.id % 255) + 1]) for c in categories}


def write_mask_png(path: Path, task: str, inst: np.ndarray, sem: np.ndarray | None) -> None:
    if task == "vps":
        assert sem is not None
        rgb = np.stack([sem.clip(0, 255), inst // 256 % 256, inst % 256], -1).astype(np.uint8)
        Image.fromarray(rgb, mode="RGB").save(path)
    elif task == "vss":
        assert sem is not None
        if sem.max(initial=0) > 255:
            Image.fromarray(sem.astype(np.uint16)).save(path)
        else:
            Image.fromarray(sem.astype(np.uint8), mode="L").save(path)
    elif inst.max(initial=0) > 255:
        Image.fromarray(inst.astype(np.uint16)).save(path)
    else:
        write_index_png(path, inst)


class OverlayWriter:
    """Streams RGB frames into an H.264 mp4 (PyAV); odd sizes use yuv444p."""

    def __init__(self, path: Path, fps: float, height: int, width: int) -> None:
        import av

        self.path = path
        self.container = av.open(str(path), mode="w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p" if height % 2 == 0 and width % 2 == 0 else "yuv444p"
        self.stream.options = {"crf": "20", "preset": "veryfast"}

    def write(self, rgb: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        self.container.mux(self.stream.encode(None))
        self.container.close()


def write_outputs(
    out: Path,
    pred: VideoPrediction,
    record: VideoRecord,
    task: str,
    categories: list[Category],
    read_frames: Callable[[list[int]], np.ndarray],
    meta: dict[str, Any],
    chunk: int = 16,
    preview_frames: int = 48,
    preview_width: int = 320,
    alpha: float = 0.5,
    progress: Callable[[int], Any] | None = None,
) -> dict[str, Path]:
    """Write masks/, tracks.json, overlay.mp4 and preview.gif into `out` (see module doc). `read_frames`
    decodes original frames (uint8 [t, H, W, 3]); frames are read `chunk` at a time and then released."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    n = len(pred.frame_names)
    fps = float(record.fps or 10.0)
    colors = class_colors(categories)
    names = {c.id: c.name for c in categories}
    writer = OverlayWriter(out / "overlay.mp4", fps, pred.height, pred.width)
    step = max(1, math.ceil(n / max(preview_frames, 1)))
    preview: list[Image.Image] = []
    segments: dict[int, list[Any]] = {}
    maps = label_maps(pred, task)
    try:
        for lo in range(0, n, chunk):
            idx = list(range(lo, min(lo + chunk, n)))
            rgb = read_frames(idx)
            for j, t in enumerate(idx):
                inst, sem = next(maps)
                write_mask_png(out / "masks" / f"{pred.frame_names[t]}.png", task, inst, sem)
                if task in ("vss", "vps") and sem is not None:
                    stuff = sem.copy()
                    if task == "vps":
                        stuff[inst > 0] = -1
                    for cid in np.unique(stuff[stuff >= 0]).tolist():
                        segments.setdefault(cid, [None] * n)[t] = encode_rle(stuff == cid)
                color = colorize(inst, sem, colors)
                labelled = ((inst > 0) | (sem is not None))[..., None]
                blend = (rgb[j] * (1 - alpha) + color * alpha).astype(np.uint8)
                frame = np.where(labelled, blend, rgb[j])
                writer.write(frame)
                if t % step == 0:
                    im = Image.fromarray(frame)
                    if im.width > preview_width:
                        im = im.resize((preview_width, max(1, round(im.height * preview_width / im.width))))
                    preview.append(im)
            if progress is not None:
                progress(len(idx))
    finally:
        writer.close()
    preview[0].save(out / "preview.gif", save_all=True, append_images=preview[1:], loop=0,
                    duration=max(20, round(1000 * step / fps)))
    doc = {
        **meta,
        "video_id": pred.video_id, "height": pred.height, "width": pred.width, "fps": fps,
        "frames": list(pred.frame_names),
        "tracks": [
            {"id": trk.track_id, "category_id": trk.category_id, "category": names.get(trk.category_id),
             "score": trk.score, "masks": trk.masks}
            for trk in pred.tracks
        ],
    }
    if task in ("vss", "vps"):
        doc["segments"] = [{"category_id": c, "category": names.get(c), "masks": m}
                           for c, m in sorted(segments.items())]
    write_json_atomic(out / "tracks.json", doc)
    return {"masks": out / "masks", "tracks": out / "tracks.json", "overlay": out / "overlay.mp4",
            "preview": out / "preview.gif"}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """bool [H, W] of a tracks.json RLE (tests and users reading the output)."""
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)
