"""VSPW (480p release): video semantic segmentation GT and mIoU/VC result PNGs.

Layout: ``<root>/data/<video>/origin/<frame>.jpg``, ``<root>/data/<video>/mask/<frame>.png`` (single
channel), split lists ``<root>/<split>.txt``, class names in ``<root>/label_num_dic_final.json``
({name: "number"}, "others" = 0) when present, else ``class_<i>``. Mask value 0 = "others" and 255 = void
(both -> IGNORE_LABEL, both in `FrameLabels.void`), 1..N -> class v - 1. All classes are stuff; no tracks.
Results: ``<out>/<video>/<frame>.png`` single-channel class ids 0..N-1 for the GT-masked frames.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from vidseg.data.formats.common import (
    check_unique,
    load_json,
    read_png,
    require_dir,
    write_index_png,
    write_json_atomic,
)
from vidseg.data.formats.vps_common import (
    check_name,
    frames_of_video,
    label_files,
    prediction_frames,
    read_split_list,
    result_pngs,
    write_frame,
)
from vidseg.data.records import (
    IGNORE_LABEL,
    AnnotationFormatError,
    Category,
    DatasetRecord,
    FrameAnnotation,
    FrameLabels,
    GroundTruthVideo,
    VideoPrediction,
    VideoRecord,
)

FORMAT = "vspw"
NAMES_FILE = "label_num_dic_final.json"
NUM_CLASSES = 124
OTHERS_VALUE = 0


def default_categories() -> list[Category]:
    return [Category(id=i, name=f"class_{i}", isthing=False) for i in range(NUM_CLASSES)]


def load_categories(root: Path) -> list[Category]:
    """Vocabulary from label_num_dic_final.json (values 1..N contiguous -> ids 0..N-1), else 124 classes."""
    path = Path(root) / NAMES_FILE
    if not path.is_file():
        return default_categories()
    data = load_json(path)
    if not isinstance(data, dict):
        raise AnnotationFormatError(f"{path}: expected an object {{class name: number}}")
    by_value: dict[int, str] = {}
    for name, value in data.items():
        try:
            v = int(value)
        except (TypeError, ValueError):
            raise AnnotationFormatError(f"{path}: class {name!r} has non-integer number {value!r}") from None
        if v in by_value:
            raise AnnotationFormatError(f"{path}: number {v} given to {by_value[v]!r} and {name!r}")
        by_value[v] = name
    numbers = sorted(v for v in by_value if v != OTHERS_VALUE)
    if numbers != list(range(1, len(numbers) + 1)) or len(numbers) >= IGNORE_LABEL:
        raise AnnotationFormatError(f"{path}: class numbers must be 1..N (N < 255) without gaps, got {numbers}")
    return [Category(id=v - 1, name=by_value[v], isthing=False) for v in numbers]


def decode_mask(path: Path, *, size: tuple[int, int], num_classes: int) -> FrameLabels:
    """FrameLabels of one VSPW mask: semantic v - 1 for 1..N, IGNORE_LABEL (and void) for 0 and 255."""
    mask = read_png(path, channels=1, size=size).astype(np.int32)
    void = (mask == OTHERS_VALUE) | (mask == IGNORE_LABEL)
    bad = ~void & ((mask < 1) | (mask > num_classes))
    if bad.any():
        raise AnnotationFormatError(
            f"{path}: mask value {int(mask[bad][0])} is not 0 (others), 1..{num_classes} or 255 (void)"
        )
    semantic = np.where(void, IGNORE_LABEL, mask - 1).astype(np.int32)
    return FrameLabels(masks={}, semantic=semantic, void=void)


def read(root: Path, split: str, *, require_annotations: bool | None = None, **options: Any) -> DatasetRecord:
    """Read a VSPW split (no mask is decoded here; masks are checked on decode). Every mask must have a
    frame of the same name. `require_annotations` (default: split != 'test') demands a mask folder."""
    if options:
        raise TypeError(f"vspw.read: unknown options {sorted(options)}")
    root = Path(root)
    cats = load_categories(root)
    if require_annotations is None:
        require_annotations = split != "test"
    videos = []
    for name in read_split_list(root / f"{split}.txt"):
        video_dir = require_dir(root / "data" / name, f"VSPW video folder of {name!r}")
        frames, index, (height, width) = frames_of_video(video_dir / "origin", "video without frames")
        required = f"mask folder of video {name!r}" if require_annotations else None
        masks = label_files(video_dir / "mask", required, index, "mask", video_dir / "origin", ".jpg")
        decoder = partial(decode_mask, size=(height, width), num_classes=len(cats))
        annotations = [FrameAnnotation(frame=index[m.stem], label_map=m, decoder=decoder) for m in masks]
        videos.append(
            VideoRecord(
                video_id=name,
                frames=frames,
                height=height,
                width=width,
                annotations=sorted(annotations, key=lambda a: a.frame),
            )
        )
    return DatasetRecord(name=FORMAT, format=FORMAT, split=split, root=root, categories=cats, videos=videos)


def write_ground_truth(
    root: Path, split: str, videos: list[GroundTruthVideo], categories: list[Category], **options: Any
) -> None:
    """Write GT in the VSPW layout: JPEG q95 frames, palette masks (class id + 1, void 255), the split list
    and label_num_dic_final.json. Category ids must be 0..N-1 (N < 255). VSPW is semantic only: the
    videos' instance maps and `isthing` are not part of the format and are not written."""
    if options:
        raise TypeError(f"vspw.write_ground_truth: unknown options {sorted(options)}")
    root = Path(root)
    where = f"{root} ({FORMAT} GT writer)"
    ids = sorted(c.id for c in categories)
    if ids != list(range(len(ids))) or not ids or len(ids) >= IGNORE_LABEL:
        raise AnnotationFormatError(f"{where}: VSPW category ids must be 0..N-1 with N < 255, got {ids}")
    check_unique((c.name for c in categories), where, "category name")
    names = {"others": str(OTHERS_VALUE)} | {c.name: str(c.id + 1) for c in categories}
    if len(names) != len(categories) + 1:
        raise AnnotationFormatError(f"{where}: a category may not be named 'others' (mask value 0)")
    write_json_atomic(root / NAMES_FILE, names)
    for video in videos:
        name = check_name(video.video_id, where)
        if len(video.semantic_maps) != len(video.frames):
            raise AnnotationFormatError(f"{where}: video {name!r}: {len(video.semantic_maps)} semantic maps for "
                                        f"{len(video.frames)} frames")  # fmt: skip
        for t, (frame, sem) in enumerate(zip(video.frames, video.semantic_maps)):
            if sem.shape != frame.shape[:2]:
                raise AnnotationFormatError(f"{where}: video {name!r} frame {t}: semantic {sem.shape} vs frame "
                                            f"{frame.shape[:2]}")  # fmt: skip
            bad = ~((sem == IGNORE_LABEL) | ((sem >= 0) & (sem < len(ids))))
            if bad.any():
                raise AnnotationFormatError(f"{where}: video {name!r} frame {t}: unknown class id {int(sem[bad][0])}")
            write_frame(root / "data" / name / "origin" / f"{t:08d}.jpg", frame)
            write_index_png(root / "data" / name / "mask" / f"{t:08d}.png", np.where(sem == IGNORE_LABEL, 255, sem + 1))
    (root / f"{split}.txt").write_text("".join(f"{v.video_id}\n" for v in videos), encoding="utf-8")


def write_results(out: Path, predictions: list[VideoPrediction], dataset: DatasetRecord, **options: Any) -> Path:
    """Write ``<out>/<video>/<frame>.png`` (class ids 0..N-1) for every GT-masked frame (every frame when
    the video has no masks). Uses `semantic_maps`, or the semantic part of `panoptic_maps`."""
    if options:
        raise TypeError(f"vspw.write_results: unknown options {sorted(options)}")
    out = Path(out)
    where = f"{out} ({FORMAT} results)"
    videos = {v.video_id: v for v in dataset.videos}
    n = len(dataset.categories)
    for pred in predictions:
        if pred.video_id not in videos:
            raise AnnotationFormatError(f"{where}: prediction for unknown video {pred.video_id!r}")
        video = videos[pred.video_id]
        if pred.semantic_maps is not None:
            maps = pred.semantic_maps
        elif pred.panoptic_maps is not None:
            maps = [sem for sem, _ in pred.panoptic_maps]
        else:
            raise AnnotationFormatError(f"{where}: prediction for {pred.video_id!r} has no semantic_maps")
        if len(maps) != len(pred.frame_names):
            raise AnnotationFormatError(
                f"{where}: {pred.video_id!r}: {len(maps)} maps for {len(pred.frame_names)} frames"
            )
        wanted = video.annotated_frames or list(range(video.num_frames))
        for f, p in zip(wanted, prediction_frames(pred, video, wanted, where)):
            sem = np.asarray(maps[p])
            if sem.shape != (video.height, video.width):
                raise AnnotationFormatError(f"{where}: {pred.video_id!r} frame {p}: map shape {sem.shape}")
            if sem.min(initial=0) < 0 or sem.max(initial=0) >= n:
                bad = sem[(sem < 0) | (sem >= n)][0]
                raise AnnotationFormatError(
                    f"{where}: {pred.video_id!r} frame {video.frames.names[f]!r}: class id {int(bad)} "
                    f"outside 0..{n - 1} (VSPW predictions may not contain void)"
                )
            write_index_png(out / video.video_id / f"{video.frames.names[f]}.png", sem)
    return out


def read_results(path: Path, dataset: DatasetRecord) -> list[VideoPrediction]:
    """Read ``<path>/<video>/<frame>.png`` for every video of `dataset` into semantic_maps (int32)."""
    path = require_dir(Path(path), "VSPW results folder")
    n = len(dataset.categories)
    out = []
    for video in dataset.videos:
        folder = require_dir(path / video.video_id, f"results folder of video {video.video_id!r}")
        files = result_pngs(folder, video, f"video {video.video_id!r}")
        maps = []
        for f in files:
            sem = read_png(f, channels=1, size=(video.height, video.width)).astype(np.int32)
            if sem.max(initial=0) >= n:
                raise AnnotationFormatError(f"{f}: class id {int(sem.max())} outside 0..{n - 1}")
            maps.append(sem)
        out.append(VideoPrediction(video_id=video.video_id, height=video.height, width=video.width,
                                   frame_names=[f.stem for f in files], semantic_maps=maps))  # fmt: skip
    return out
