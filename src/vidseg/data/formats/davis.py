"""DAVIS 2017 semi-supervised VOS (formats.md §2).

Layout: `JPEGImages/<res>/<seq>/*.jpg`, `Annotations/<res>/<seq>/*.png` (indexed; k = object k, 0 =
background, 255 = void -> FrameLabels.void), `ImageSets/<year>/<split>.txt`. N = the max id of the first
annotation frame; a later id above N is an error naming the file. The annotation PNGs are scanned at read
time (headers + values, they are annotations, not frames) to fill `track_ids` and the prompts; frames are
never decoded (only the first JPEG's header, for the size).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vidseg.data.formats._vos_common import (
    JPEG_QUALITY,
    VOID_VALUE,
    IndexPngDecoder,
    annotation_pngs,
    check_gt_video,
    check_ids,
    image_size,
    jpeg_frames,
    object_ids,
    png_frame,
    read_index_png,
    read_index_results,
    save_jpeg,
    write_index_result_folders,
)
from vidseg.data.formats.common import (
    check_unique,
    read_name_list,
    write_index_png,
)
from vidseg.data.records import (
    IGNORE_LABEL,
    AnnotationFormatError,
    Category,
    DatasetRecord,
    FrameAnnotation,
    FrameSource,
    GroundTruthVideo,
    Prompt,
    TrackInfo,
    VideoPrediction,
    VideoRecord,
)

FORMAT = "davis"
RESOLUTIONS = ("480p", "Full-Resolution")


def _sequence_list(root: Path, split: str, year: str) -> tuple[Path, list[str]]:
    path = root / "ImageSets" / year / f"{split}.txt"
    names = read_name_list(path, f"DAVIS ImageSets list of split {split!r}", "sequence")
    return path, names


def _read_sequence(root: Path, seq: str, listed_in: Path, resolution: str, annotations_dir: str) -> VideoRecord:
    frames_dir = root / "JPEGImages" / resolution / seq
    frame_files, names = jpeg_frames(frames_dir, f"sequence {seq!r}", listed_in)
    index = {n: i for i, n in enumerate(names)}
    height, width = image_size(frame_files[0])

    ann_dir = root / annotations_dir / resolution / seq
    pngs = annotation_pngs(ann_dir, f"sequence {seq!r}", listed_in)
    if not pngs:
        raise AnnotationFormatError(f"{ann_dir}: sequence {seq!r} has no annotation PNG (the first frame is needed)")
    if 1 < len(pngs) < len(frame_files):
        have = {p.stem for p in pngs}
        missing = next(n for n in names if n not in have)
        raise AnnotationFormatError(
            f"{ann_dir / (missing + '.png')}: missing; sequence {seq!r} has {len(pngs)} annotation PNGs for "
            f"{len(frame_files)} frames (expected one per frame, or only the first for test sets)"
        )
    num_objects = 0
    annotations: list[FrameAnnotation] = []
    first_seen: dict[int, int] = {}
    for i, png in enumerate(pngs):
        frame = png_frame(png, index, frames_dir)
        ids = object_ids(read_index_png(png, (height, width)))
        if i == 0:
            num_objects = max(ids, default=0)
            if num_objects == 0:
                raise AnnotationFormatError(f"{png}: the first annotation frame of {seq!r} holds no object")
        check_ids(png, ids, num_objects, None)
        for k in ids:
            first_seen.setdefault(k, frame)
        annotations.append(FrameAnnotation(frame=frame, label_map=png, track_ids=frozenset(ids)))
    decoder = IndexPngDecoder(height=height, width=width, max_id=num_objects, void=True)
    for ann in annotations:
        ann.decoder = decoder
    tracks = {k: TrackInfo(track_id=k) for k in range(1, num_objects + 1)}
    prompts = [Prompt(track_id=k, frame=first_seen[k]) for k in sorted(first_seen)]
    never = [k for k in tracks if k not in first_seen]
    return VideoRecord(
        video_id=seq,
        frames=FrameSource(kind="images", paths=frame_files, names=names),
        height=height,
        width=width,
        tracks=tracks,
        annotations=annotations,
        prompts=prompts,
        meta={"num_objects": num_objects, "objects_never_visible": never},
    )


def read(
    root: str | Path,
    split: str,
    *,
    resolution: str = "480p",
    year: str = "2017",
    annotations_dir: str = "Annotations",
    name: str = "davis17",
) -> DatasetRecord:
    """Read a DAVIS split listed in `ImageSets/<year>/<split>.txt`. Tracks are objects 1..N (no classes);
    prompts are (object, first frame where it appears); `annotations_dir="Annotations_unsupervised"` reads
    the unsupervised annotations."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"DAVIS resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    root = Path(root)
    listed_in, seqs = _sequence_list(root, split, year)
    videos = [_read_sequence(root, s, listed_in, resolution, annotations_dir) for s in seqs]
    meta = {"resolution": resolution, "year": year, "image_set": str(listed_in)}
    return DatasetRecord(name=name, format=FORMAT, split=split, root=root, categories=[], videos=videos, meta=meta)


def write_ground_truth(
    root: str | Path,
    split: str,
    videos: list[GroundTruthVideo],
    categories: list[Category],
    *,
    resolution: str = "480p",
    year: str = "2017",
    first_frame_only: bool = False,
    void_from_semantic: bool = False,
    jpeg_quality: int = JPEG_QUALITY,
) -> Path:
    """Write frames `00000.jpg …`, palette annotation PNGs (track id = object id, all frames or only the
    first with `first_frame_only`, like the test sets) and the ImageSets list. Track ids must be 1..254 and
    the largest must be visible in frame 0 (DAVIS defines N from the first frame); use the ytvos format for
    objects that all enter later. `void_from_semantic` writes 255 where the semantic map is IGNORE_LABEL and
    no track is. Categories are not stored (DAVIS has none). Returns the ImageSets file."""
    root = Path(root)
    check_unique((v.video_id for v in videos), "davis.write_ground_truth", "video_id")
    for video in videos:
        ids = check_gt_video(video)
        where = f"GroundTruthVideo {video.video_id!r}"
        if not ids or ids[-1] >= VOID_VALUE:
            raise ValueError(f"{where}: DAVIS needs object ids in 1..254, got {ids}")
        first_ids = set(np.unique(video.instance_maps[0]).tolist())
        if ids[-1] not in first_ids:
            raise ValueError(
                f"{where}: the largest object id {ids[-1]} is not in frame 0, so DAVIS' N (max id of the "
                "first frame) would be smaller than it; renumber the objects or use the ytvos format"
            )
        for t, (frame, imap) in enumerate(zip(video.frames, video.instance_maps)):
            save_jpeg(root / "JPEGImages" / resolution / video.video_id / f"{t:05d}.jpg", frame, jpeg_quality)
            if first_frame_only and t > 0:
                continue
            labels = imap.astype(np.uint8)
            if void_from_semantic:
                labels[(video.semantic_maps[t] == IGNORE_LABEL) & (imap == 0)] = VOID_VALUE
            write_index_png(root / "Annotations" / resolution / video.video_id / f"{t:05d}.png", labels)
    image_set = root / "ImageSets" / year / f"{split}.txt"
    image_set.parent.mkdir(parents=True, exist_ok=True)
    image_set.write_text("".join(f"{v.video_id}\n" for v in videos), encoding="utf-8")
    return image_set


def _object_ids(video: VideoRecord) -> set[int]:
    """Object ids 1..N of a read DAVIS sequence."""
    return set(range(1, int(video.meta["num_objects"]) + 1))


def write_results(out: str | Path, predictions: list[VideoPrediction], dataset: DatasetRecord, **options: Any) -> Path:
    """Write `<out>/<seq>/<frame>.png` (DAVIS palette, values 0..N) for every frame of every predicted
    sequence, from `VideoPrediction.instance_map(t)` (higher score wins overlaps). Returns `out`."""
    out = Path(out)
    write_index_result_folders(out, predictions, dataset, "sequence", _object_ids)
    return out


def read_results(path: str | Path, dataset: DatasetRecord) -> list[VideoPrediction]:
    """Read `<path>/<seq>/<frame>.png` for every sequence and frame of `dataset`; one TrackPrediction per
    object id present (score 1, no class). Ids above the sequence's N are errors naming the file."""
    path = Path(path)
    return [read_index_results(path / v.video_id, v, _object_ids(v)) for v in dataset.videos]
