"""The data contract: every reader produces these records, every writer consumes these predictions.

Nothing here decodes a video frame. Annotation payloads are either in memory (compressed COCO RLE from a
JSON file) or a reference to an annotation PNG that is decoded only when a clip needs it
(`FrameAnnotation.decode`). Frame pixels are read through `FrameSource` (see `data/video.py`).

Conventions
- `frame` indices always index the video's frame list (`FrameSource.names`), 0-based.
- Track ids are positive ints, unique within one video (0 is never a track).
- Category ids are the dataset's own ids (YouTube-VIS 1-based, KITTI-STEP train ids 0..18, VIPSeg and
  VSPW 0-based after the official mapping); `DatasetRecord.categories` lists them in vocabulary order.
- Semantic maps are int32 with `IGNORE_LABEL` (255) for void / unlabelled pixels.
- Points are (x, y) in pixels of the original frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from vidseg.data.frame_resize import finish_frames
from vidseg.data.mask_rects import paint_rects

IGNORE_LABEL = 255

RLE = dict[str, Any]
"""Compressed COCO RLE: ``{"size": [h, w], "counts": "<ascii>"}``."""


class VidsegDataError(ValueError):
    """Base class of every error raised for bad input data. Messages name the file and the field/frame."""


class AnnotationFormatError(VidsegDataError):
    """An annotation file is malformed: missing/wrong field, bad JSON, inconsistent sizes or ids."""


class MissingFileError(VidsegDataError, FileNotFoundError):
    """A file or folder the format requires does not exist."""


class CorruptMediaError(VidsegDataError):
    """An image, PNG or video file cannot be decoded (truncated, zero bytes, wrong mode or size)."""


class ClipSamplingError(VidsegDataError):
    """A clip cannot be drawn from a video (e.g. clip longer than the video, no annotated frame)."""


@dataclass(frozen=True)
class Category:
    """One class of a dataset's vocabulary."""

    id: int
    name: str
    isthing: bool = True
    color: tuple[int, int, int] | None = None


@dataclass
class TrackInfo:
    """Identity-level facts about one target (object / instance / segment tube)."""

    track_id: int
    category_id: int | None = None
    iscrowd: bool = False


@dataclass(frozen=True)
class Point:
    """A point prompt in pixels of the original frame."""

    x: float
    y: float


@dataclass
class Prompt:
    """A target given to the model: its mask is the track's mask in `record.annotation_at(frame)`;
    `point` is set for point-exemplar prompts (BURST)."""

    track_id: int
    frame: int
    point: Point | None = None
    bbox: tuple[float, float, float, float] | None = None  # x, y, w, h


@dataclass
class FrameLabels:
    """Decoded annotation of one frame.

    masks: track id -> bool [H, W] (may overlap for instance formats; non-overlapping for label-map formats).
    semantic: int32 [H, W] class id per pixel, IGNORE_LABEL where unlabelled; None if the format has none.
    void: bool [H, W] pixels the benchmark ignores (DAVIS 255, panoptic void); None if not applicable.
    """

    masks: dict[int, np.ndarray]
    semantic: np.ndarray | None = None
    void: np.ndarray | None = None
    # Convention for panoptic formats: `masks` holds thing tracks only; stuff lives in `semantic`; pixels of
    # a thing class in `semantic` that no track mask covers are crowd (e.g. KITTI-STEP instance 0).


LabelMapDecoder = Callable[[Path], FrameLabels]
"""Decodes one annotation PNG (format specific) into FrameLabels; raises CorruptMediaError /
AnnotationFormatError naming the file."""


@dataclass
class FrameAnnotation:
    """Annotation of one annotated frame: in-memory RLEs and/or a lazily decoded label-map file."""

    frame: int
    rles: dict[int, RLE | None] | None = None
    label_map: Path | None = None
    decoder: LabelMapDecoder | None = None
    track_ids: frozenset[int] = frozenset()  # tracks with a non-empty mask here (known without decoding)

    def decode(self) -> FrameLabels:
        """Decode this frame's masks (RLE via pycocotools, label maps via the format's decoder)."""
        if self.label_map is not None:
            if self.decoder is None:
                raise AnnotationFormatError(f"{self.label_map}: no decoder registered for this label map")
            return self.decoder(self.label_map)
        from pycocotools import mask as mask_utils

        masks: dict[int, np.ndarray] = {}
        for tid, rle in (self.rles or {}).items():
            if rle is not None:
                masks[tid] = mask_utils.decode(rle).astype(bool)
        return FrameLabels(masks=masks)


@dataclass
class FrameSource:
    """Where the frames of a video are: a list of image files or one video file (+ frame count)."""

    kind: Literal["images", "video"]
    paths: list[Path] = field(default_factory=list)  # images: one path per frame
    video_path: Path | None = None  # video: the container file
    names: list[str] = field(default_factory=list)  # frame names (file stems / '%05d' for video files)

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class VideoRecord:
    """One video of a dataset, as every reader returns it. Holds no pixels."""

    video_id: str
    frames: FrameSource
    height: int
    width: int
    fps: float | None = None
    tracks: dict[int, TrackInfo] = field(default_factory=dict)
    annotations: list[FrameAnnotation] = field(default_factory=list)  # sorted by frame
    prompts: list[Prompt] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # format-specific extras (original ids, names)

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def annotated_frames(self) -> list[int]:
        return [a.frame for a in self.annotations]

    def annotation_at(self, frame: int) -> FrameAnnotation | None:
        for ann in self.annotations:
            if ann.frame == frame:
                return ann
        return None


@dataclass
class DatasetRecord:
    """A split of a dataset as read from disk."""

    name: str  # e.g. "ytvis2019", "davis17", "kitti_step"
    format: str  # reader key, e.g. "ytvis", "davis", "kitti_step"
    split: str
    root: Path
    categories: list[Category]
    videos: list[VideoRecord]
    meta: dict[str, Any] = field(default_factory=dict)

    def category_index(self) -> dict[int, int]:
        """Dataset category id -> contiguous index 0..C-1 (vocabulary order)."""
        return {c.id: i for i, c in enumerate(self.categories)}


# ----------------------------------------------------------------------------------------------------------
# Ground truth to write (synthetic generator -> every format's GT writer)
# ----------------------------------------------------------------------------------------------------------


@dataclass
class GroundTruthVideo:
    """A fully known video (synthetic): pixels, a non-overlapping track-id map and a semantic map per frame.

    instance_maps[t]: int32 [H, W], track id per pixel (0 = no track); stuff regions are not tracks.
    semantic_maps[t]: int32 [H, W], category id per pixel (IGNORE_LABEL = void).
    track_categories: track id -> category id.  points: track id -> (frame, Point) exemplar point.
    """

    video_id: str
    frames: list[np.ndarray]  # uint8 [H, W, 3]
    instance_maps: list[np.ndarray]
    semantic_maps: list[np.ndarray]
    track_categories: dict[int, int]
    points: dict[int, tuple[int, Point]] = field(default_factory=dict)
    fps: float = 6.0

    @property
    def height(self) -> int:
        return int(self.frames[0].shape[0])

    @property
    def width(self) -> int:
        return int(self.frames[0].shape[1])


# ----------------------------------------------------------------------------------------------------------
# Predictions (inference / tests -> every format's result writer)
# ----------------------------------------------------------------------------------------------------------


@dataclass
class TrackPrediction:
    """One predicted track: per-frame compressed RLE (None where absent), class and score."""

    track_id: int
    category_id: int | None
    score: float
    masks: list[RLE | None]


@dataclass
class VideoPrediction:
    """Predictions for one video, in original resolution.

    tracks: instance/object tracks (VIS, VOS, PET, the thing part of VPS).
    semantic_maps: int32 [H, W] per frame (VSS, stuff part of VPS) or None.
    panoptic_maps: per frame (semantic int32 [H, W], instance int32 [H, W]) or None (VPS writers).
    """

    video_id: str
    height: int
    width: int
    frame_names: list[str]
    tracks: list[TrackPrediction] = field(default_factory=list)
    semantic_maps: list[np.ndarray] | None = None
    panoptic_maps: list[tuple[np.ndarray, np.ndarray]] | None = None

    def instance_map(self, t: int) -> np.ndarray:
        """int32 [H, W] track-id map of frame t (higher score pasted last, so it wins overlaps)."""
        from pycocotools import mask as mask_utils

        out = np.zeros((self.height, self.width), dtype=np.int32)
        for trk in sorted(self.tracks, key=lambda tr: tr.score):
            rle = trk.masks[t]
            if rle is not None:
                out[mask_utils.decode(rle).astype(bool)] = trk.track_id
        return out


# ----------------------------------------------------------------------------------------------------------
# Training samples
# ----------------------------------------------------------------------------------------------------------


@dataclass
class ClipSample:
    """One training/validation clip after sampling and clip-consistent transforms.

    frames: uint8 [T, 3, H, W] (padded to a multiple of 64; `pad_mask` marks valid pixels).
    masks: bool [N, T, H, W] per target; track_ids/class_ids: int64 [N] (class index = contiguous index
    into the dataset's vocabulary, -1 when the task has no classes).
    semantic: int64 [T, H, W] contiguous class index, IGNORE_LABEL where ignored; or None.
    points: float32 [N, 2] (x, y) in the transformed clip's pixels, NaN where the target has no point.
    prompt_frames: int64 [N] clip-frame index where each target's prompt is given (VOS/PET), else -1.
    colour: float32 [3, 4] affine colour jitter (M | b) of this clip on the 0-255 RGB scale, applied on the
    device to valid pixels before normalisation (`vidseg.model.backbone.normalize_frames`); None = identity
    (frames already final, e.g. evaluation clips).
    device_resize: (h, w, H, W, flip) when `frames` still hold the unflipped h×w crop, to be flipped, resized to
    H×W and padded on the device (`Batch.to`, `vidseg.data.frame_resize`); None when the frames are final.
    mask_rects: int32 [R, 5] rows (n * T + t, i0, i1, j0, j1) when the masks are still rectangles to paint on the
    device (`Batch.to`, `vidseg.data.mask_rects`); `masks` is then bool [N, T, 0, 0].
    """

    frames: torch.Tensor
    masks: torch.Tensor
    track_ids: torch.Tensor
    class_ids: torch.Tensor
    pad_mask: torch.Tensor  # bool [H, W]
    semantic: torch.Tensor | None = None
    points: torch.Tensor | None = None
    prompt_frames: torch.Tensor | None = None
    iscrowd: torch.Tensor | None = None  # bool [N]
    video_id: str = ""
    dataset: str = ""
    frame_indices: list[int] = field(default_factory=list)
    orig_size: tuple[int, int] = (0, 0)
    colour: torch.Tensor | None = None  # float32 [3, 4]
    device_resize: tuple[int, int, int, int, bool] | None = None
    mask_rects: torch.Tensor | None = None  # int32 [R, 5]: `masks` is [N, T, 0, 0] until painted (data.mask_rects)


@dataclass
class Batch:
    """A collated batch: one task and one dataset per batch (the multi-task sampler guarantees it)."""

    task: str
    dataset: str
    frames: torch.Tensor  # uint8 [B, T, 3, H, W]
    pad_mask: torch.Tensor  # bool [B, H, W]
    samples: list[ClipSample]
    colour: torch.Tensor | None = None  # float32 [B, 3, 4] per-clip colour jitter (see ClipSample), or None
    # int64 [B, 5] (h, w, H, W, flip) per clip while `frames` still hold crops (ClipSample.device_resize), else None
    device_resize: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        """Move frames and targets to `device` (frames stay uint8; normalise on the device). Crops still to be
        resized (`device_resize`) are flipped, resized and padded there, to the size of `pad_mask`."""
        frames = self.frames.to(device, non_blocking=True)
        if self.device_resize is not None:
            frames = finish_frames(frames, self.device_resize, tuple(self.pad_mask.shape[-2:]), PAD_VALUE)
        moved = []
        height, width = self.pad_mask.shape[-2:]
        for i, s in enumerate(self.samples):
            fields = {}
            for name in ("masks", "track_ids", "class_ids", "semantic", "points", "prompt_frames", "iscrowd",
                         "colour"):
                v = getattr(s, name)
                fields[name] = v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            if s.mask_rects is not None:
                fields["masks"] = paint_rects(s.mask_rects, s.masks.shape[0], s.masks.shape[1], height, width, device)
            moved.append(
                ClipSample(
                    frames=frames[i],
                    pad_mask=s.pad_mask.to(device),
                    video_id=s.video_id,
                    dataset=s.dataset,
                    frame_indices=s.frame_indices,
                    orig_size=s.orig_size,
                    **fields,
                )
            )
        return Batch(
            task=self.task,
            dataset=self.dataset,
            frames=frames,
            pad_mask=self.pad_mask.to(device),
            samples=moved,
            colour=None if self.colour is None else self.colour.to(device, non_blocking=True),
        )

    def __len__(self) -> int:
        return self.frames.shape[0]


PAD_VALUE = 128  # frame padding (TarViS pads with 128 on the 0-255 scale)
