"""`python -m vidseg.predict ckpt=CKPT task=T video=PATH out=DIR [prompt=P | points=[[x,y],...] points_frame=K |
dataset=NAME]` — run any task of a checkpoint on a video file or a frame folder.

Prompts: VOS `prompt=` a palette/index PNG for the first frame, or a folder of such PNGs named like the frames
(DAVIS style: an object may first appear on a later frame); PET `points=` (x, y) pixels on frame
`points_frame`; VIS/VPS/VSS `dataset=` a vocabulary the checkpoint was trained on (default: the task's only
one). The video streams through the model in overlapping clips (memory bounded by a clip); DIR receives
masks/<frame>.png, tracks.json, overlay.mp4 and preview.gif (see `vidseg.inference.outputs`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from vidseg.data.records import (
    AnnotationFormatError,
    CorruptMediaError,
    FrameAnnotation,
    MissingFileError,
    Point,
    Prompt,
    VideoRecord,
)

log = logging.getLogger(__name__)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def read_video_record(path: Path | str) -> VideoRecord:
    """The single video at `path` (video file or frame folder) as an unannotated VideoRecord."""
    from vidseg.data.formats import get_format

    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path}: video file or frame folder does not exist")
    record = get_format("video").read(path)
    if len(record.videos) != 1:
        raise AnnotationFormatError(f"{path}: holds {len(record.videos)} videos; pass one video file or frame folder")
    video = record.videos[0]
    if video.num_frames == 0:
        raise CorruptMediaError(f"{path}: video has no frames")
    return video


def _index_png(path: Path, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I;16", "I"):
                raise AnnotationFormatError(f"{path}: prompt PNG must be a palette/index image, not mode {im.mode}")
            arr = np.asarray(im).astype(np.int64)
    except (OSError, SyntaxError) as e:
        raise CorruptMediaError(f"{path}: cannot decode prompt PNG ({e})") from e
    if arr.shape != size:
        raise AnnotationFormatError(f"{path}: prompt mask is {arr.shape[0]}x{arr.shape[1]}, the video frames are "
                                    f"{size[0]}x{size[1]}")
    return arr


def add_mask_prompts(record: VideoRecord, prompt: Path | str) -> None:
    """VOS prompts from an index PNG (first frame) or a folder of index PNGs named like the frames. Value 0 is
    background, 255 void; every other value is an object that starts on the first PNG where it appears."""
    from vidseg.data.formats.common import encode_rle

    prompt = Path(prompt)
    size = (record.height, record.width)
    if prompt.is_dir():
        pngs = sorted(prompt.glob("*.png"))
        if not pngs:
            raise MissingFileError(f"{prompt}: prompt folder contains no PNG files")
        frame_of = {name: i for i, name in enumerate(record.frames.names)}
        unknown = [p.name for p in pngs if p.stem not in frame_of]
        if unknown:
            raise AnnotationFormatError(f"{prompt}: PNGs {unknown[:5]} are not named like the video's frames "
                                        f"(e.g. {record.frames.names[0]}.png)")
        files = [(frame_of[p.stem], p) for p in pngs]
    elif prompt.is_file():
        files = [(0, prompt)]
    else:
        raise MissingFileError(f"{prompt}: prompt PNG or folder does not exist")
    seen: set[int] = set()
    for frame, path in sorted(files):
        arr = _index_png(path, size)
        ids = [int(v) for v in np.unique(arr) if v not in (0, 255)]
        record.annotations.append(FrameAnnotation(frame, rles={i: encode_rle(arr == i) for i in ids},
                                                  track_ids=frozenset(ids)))
        for i in ids:
            if i not in seen:
                seen.add(i)
                record.prompts.append(Prompt(i, frame))
    if not seen:
        raise AnnotationFormatError(f"{prompt}: prompt mask(s) contain no object (all pixels 0 or 255)")


def add_point_prompts(record: VideoRecord, points: Any, frame: int) -> None:
    """PET prompts: one object per (x, y) pixel point on `frame`."""
    pts = OmegaConf.to_container(points) if OmegaConf.is_config(points) else points
    if not isinstance(pts, list) or not pts or not all(isinstance(p, list | tuple) and len(p) == 2 for p in pts):
        raise AnnotationFormatError(f"points: expected [[x, y], ...], got {pts!r}")
    if not 0 <= frame < record.num_frames:
        raise AnnotationFormatError(f"points_frame: {frame} outside the video's {record.num_frames} frames")
    for i, (x, y) in enumerate(pts, start=1):
        if not (0 <= float(x) < record.width and 0 <= float(y) < record.height):
            raise AnnotationFormatError(f"points: ({x}, {y}) lies outside the {record.width}x{record.height} frame")
        record.prompts.append(Prompt(i, frame, point=Point(float(x), float(y))))


def predict(cfg: DictConfig) -> dict[str, Path]:
    """Load the checkpoint, stream the video through the task, write the outputs; returns their paths."""
    from tqdm.auto import tqdm

    from vidseg.data.video import open_frames
    from vidseg.inference.loading import check_vocabulary, load_run
    from vidseg.inference.outputs import write_outputs
    from vidseg.inference.stream import DecodedFrames

    record = read_video_record(cfg.video)
    run = load_run(cfg.ckpt, paths=cfg.paths, config=cfg.get("config"), device=resolve_device(cfg.device))
    task = run.task(chosen_task(cfg))
    apply_clip_overrides(task, cfg)
    datasets = run.datasets_of(task.name)
    dataset = cfg.get("dataset") or (datasets[0] if len(datasets) == 1 or task.name in ("vos", "pet") else None)
    if dataset is None:
        raise AnnotationFormatError(f"task {task.name}: choose the vocabulary with dataset=... (one of {datasets})")
    check_vocabulary(task, dataset)
    if task.name == "vos":
        if not cfg.get("prompt"):
            raise AnnotationFormatError("task vos needs prompt=<index PNG of the first frame, or a folder of PNGs>")
        add_mask_prompts(record, cfg.prompt)
    elif task.name == "pet":
        if not cfg.get("points"):
            raise AnnotationFormatError("task pet needs points=[[x,y],...] (pixels) and points_frame=K")
        add_point_prompts(record, cfg.points, int(cfg.get("points_frame") or 0))
    short, max_dim = run.eval_size(dataset) if dataset in run.datamodule.specs else (96, 1333)
    short, max_dim = int(cfg.get("short") or short), int(cfg.get("max_dim") or max_dim)
    out = Path(cfg.out)
    show = bool(cfg.get("progress", True))
    with tqdm(total=record.num_frames, desc=f"{task.name} {record.video_id}", unit="frame", disable=not show) as bar:
        frames = DecodedFrames(record, short, max_dim, backend=cfg.get("backend", "auto"), progress=bar.update)
        try:
            pred = task.predict_video(run.model, frames, record, dataset)
        finally:
            frames.close()
    reader = open_frames(record.frames, backend=cfg.get("backend", "auto"))
    categories = list(task.vocabularies.get(dataset, []))
    meta = {"task": task.name, "dataset": dataset, "video": str(cfg.video), "checkpoint": str(cfg.ckpt)}
    try:
        with tqdm(total=record.num_frames, desc="writing", unit="frame", disable=not show) as bar:
            paths = write_outputs(out, pred, record, task.name, categories, reader.read, meta, progress=bar.update)
    finally:
        reader.close()
    log.info("predictions written to %s", out)
    return paths


def chosen_task(cfg: DictConfig) -> str | None:
    """The task picked with `task=T` (the config group puts its node under `tasks.T`); None if none."""
    tasks = cfg.get("tasks")
    if not tasks:
        return None
    if len(tasks) != 1:
        raise AnnotationFormatError(f"task: choose one task (task=vis|vss|vps|vos|pet), got {sorted(tasks)}")
    return str(next(iter(tasks)))


def apply_clip_overrides(task: Any, cfg: DictConfig) -> None:
    """clip_len/clip_overlap from the command line (0 = the whole video as one clip; null = the task's), and the
    VOS/PET inference switches revive_lost, label_with_background and flip_tta."""
    if cfg.get("clip_len") is not None:
        task.clip_len = int(cfg.clip_len) or None
        task.clip_overlap = 0
    if cfg.get("clip_overlap") is not None:
        task.clip_overlap = int(cfg.clip_overlap)
    if cfg.get("revive_lost") is not None and hasattr(task, "revive_lost"):
        task.revive_lost = bool(cfg.revive_lost)
    for switch in ("label_with_background", "flip_tta"):
        if cfg.get(switch) is not None and hasattr(task, switch):
            setattr(task, switch, bool(cfg[switch]))


@hydra.main(version_base="1.3", config_path="../../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    predict(cfg)


if __name__ == "__main__":
    main()
