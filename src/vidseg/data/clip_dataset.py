"""Training clips of one dataset: sample frame indices, decode only those frames and their annotations,
build the task's targets, apply the clip transform, return a `ClipSample`.

Determinism: item `i` of epoch `e` draws everything (frames, crop, flip, jitter) from
`np.random.default_rng([seed, e, i])`, so a sample does not depend on the worker that makes it or on the
order items are asked for. The epoch lives in a shared-memory tensor, so `set_epoch` reaches persistent
DataLoader workers too.

Targets per task:
- vis / vps: the tracks visible in any clip frame, in track-id order; class_ids = contiguous vocabulary
  index (`DatasetRecord.category_index`), iscrowd from the track. vps (and vss, or `with_semantic=True`)
  adds the semantic map as contiguous indices with IGNORE_LABEL.
- vss: no instance targets, only the semantic map.
- vos / pet: the objects visible in the reference (first) clip frame, in track-id order; class_ids = -1,
  prompt_frames = 0, points = the distance-transform peak of each object's (transformed) reference mask.
Targets that the crop/resize empties are dropped by the transform; the order of the rest is kept.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from vidseg.data.collate import collate_clips
from vidseg.data.records import (
    IGNORE_LABEL,
    AnnotationFormatError,
    Batch,
    ClipSample,
    ClipSamplingError,
    CorruptMediaError,
    DatasetRecord,
    FrameAnnotation,
    FrameLabels,
    FrameSource,
    VideoRecord,
)
from vidseg.data.rle_masks import RLEClipMasks
from vidseg.data.sampling import ClipSampler
from vidseg.data.transforms import ClipTransform

__all__ = ["TASKS", "ClipDataset", "distance_peak", "rle_boxes"]

TASKS = ("vis", "vss", "vps", "vos", "pet")
_INSTANCE_TASKS = ("vis", "vps")
_PROMPT_TASKS = ("vos", "pet")
_SEMANTIC_TASKS = ("vss", "vps")

ReaderFactory = Callable[[FrameSource, str], Any]
"""(frame source, backend) -> object with `read(indices) -> uint8 [T, H, W, 3]` (vidseg.data.video API)."""


def _default_reader_factory(source: FrameSource, backend: str) -> Any:
    from vidseg.data.video import open_frames

    return open_frames(source, backend)


def distance_peak(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) of the pixel deepest inside `mask` (Euclidean distance to the nearest background pixel, the
    outside of the frame counting as background); ties go to the pixel closest to the mask's centroid.
    NaN, NaN for an empty mask. Works on the mask's bounding box only."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return float("nan"), float("nan")
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box = np.pad(mask[y0:y1, x0:x1], 1)
    dist = ndimage.distance_transform_edt(box)
    best_y, best_x = np.nonzero(dist == dist.max())
    cy, cx = ys.mean() - y0 + 1, xs.mean() - x0 + 1
    k = int(np.argmin((best_y - cy) ** 2 + (best_x - cx) ** 2))
    return float(best_x[k] - 1 + x0), float(best_y[k] - 1 + y0)


def rle_boxes(anns: list[FrameAnnotation | None], ids: list[int]) -> np.ndarray | None:
    """Exact bounding boxes int64 [N, T, 4] (top, bottom, left, right; ends exclusive; zeros when absent or
    empty) of tracks `ids` in the clip frames, read from the RLEs by `pycocotools.mask.toBbox` without
    decoding. None when a frame's annotation is a label map (its masks must be decoded first)."""
    from pycocotools import mask as mask_utils

    if any(a is not None and a.label_map is not None for a in anns):
        return None
    boxes = np.zeros((len(ids), len(anns), 4), dtype=np.int64)
    slots, rles = [], []
    for n, tid in enumerate(ids):
        for t, ann in enumerate(anns):
            rle = None if ann is None or ann.rles is None else ann.rles.get(tid)
            if rle is not None:
                slots.append((n, t))
                rles.append(rle)
    if rles:
        x, y, w, h = mask_utils.toBbox(rles).round().astype(np.int64).T
        boxes[tuple(np.array(slots).T)] = np.stack([y, y + h, x, x + w], axis=-1)
    return boxes


class ClipDataset(Dataset):
    """`len = videos × samples_per_video`; item i is a clip of video i // samples_per_video.

    reader_factory(source, backend) opens a video's frames (default: `vidseg.data.video.open_frames`); readers
    are opened lazily in the process that uses them (each DataLoader worker has its own), at most
    `max_open_readers` at a time. `rle_masks`: clips whose annotations are all RLEs hand them to the transform
    as `RLEClipMasks` (never decoded at full size; False: decoded first, as label maps are).
    """

    def __init__(
        self,
        dataset: DatasetRecord,
        sampler: ClipSampler,
        transform: ClipTransform,
        *,
        task: str,
        samples_per_video: int = 1,
        seed: int = 0,
        backend: str = "auto",
        with_semantic: bool = False,
        prompts: bool = False,
        reader_factory: ReaderFactory | None = None,
        max_open_readers: int = 8,
        rle_masks: bool = True,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        if samples_per_video < 1:
            raise ValueError(f"samples_per_video must be ≥ 1, got {samples_per_video}")
        self.dataset = dataset
        self.sampler = sampler
        self.transform = transform
        self.task = task
        self.samples_per_video = int(samples_per_video)
        self.seed = int(seed)
        self.backend = backend
        self.with_semantic = bool(with_semantic) or task in _SEMANTIC_TASKS
        self.prompts = bool(prompts) or task == "pet"
        self.reader_factory = reader_factory or _default_reader_factory
        self.max_open_readers = int(max_open_readers)
        self.rle_masks = bool(rle_masks)  # RLE targets stay runs until the transform resizes them (`rle_masks`)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._class_index = dataset.category_index()
        self._semantic_lut = self._build_semantic_lut()
        self._readers: OrderedDict[int, Any] = OrderedDict()
        self._readers_pid = os.getpid()
        self._ann_index: dict[int, dict[int, FrameAnnotation]] = {}

    # ------------------------------------------------------------------ bookkeeping
    def __len__(self) -> int:
        return len(self.dataset.videos) * self.samples_per_video

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose samples items produce (shared with DataLoader workers)."""
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        view = self.__dict__.get("_epoch_view")
        if view is None:  # numpy reads the shared value at a fraction of a torch call's cost (once per item)
            view = self._epoch_view = self._epoch.numpy()
        return int(view[0])

    def rng_for(self, index: int) -> np.random.Generator:
        """The generator of item `index` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def collate(self, samples: Sequence[ClipSample]) -> Batch:
        """Batch clips of this dataset (`collate.collate_clips` with this dataset's task)."""
        return collate_clips(samples, self.task)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_readers"] = OrderedDict()  # open decoders never travel to another process
        state.pop("_epoch_view", None)  # a view of the shared epoch would travel as a copy
        return state

    def _reader(self, video_index: int, video: VideoRecord) -> Any:
        if self._readers_pid != os.getpid():  # forked into a worker: drop the parent's readers
            self._readers = OrderedDict()
            self._readers_pid = os.getpid()
        reader = self._readers.get(video_index)
        if reader is None:
            reader = self.reader_factory(video.frames, self.backend)
            self._readers[video_index] = reader
            while len(self._readers) > self.max_open_readers:
                _, old = self._readers.popitem(last=False)
                if hasattr(old, "close"):
                    old.close()
        else:
            self._readers.move_to_end(video_index)
        return reader

    def _annotation(self, video_index: int, video: VideoRecord, frame: int) -> FrameAnnotation | None:
        index = self._ann_index.get(video_index)
        if index is None:
            index = self._ann_index[video_index] = {a.frame: a for a in video.annotations}
        return index.get(frame)

    def _build_semantic_lut(self) -> np.ndarray | None:
        """Dataset category id -> contiguous index (IGNORE_LABEL stays; unknown ids map to -1)."""
        if not self.dataset.categories:
            return None
        size = max(max(self._class_index), IGNORE_LABEL) + 1
        lut = np.full(size, -1, dtype=np.int64)
        for cid, idx in self._class_index.items():
            if cid < 0:
                raise AnnotationFormatError(f"dataset {self.dataset.name!r}: negative category id {cid}")
            lut[cid] = idx
        lut[IGNORE_LABEL] = IGNORE_LABEL
        if len(self._class_index) < IGNORE_LABEL:
            return lut.astype(np.uint8) if lut.min() >= 0 else lut.astype(np.int16)
        return lut

    # ------------------------------------------------------------------ one clip
    max_prompt_retries = 10

    def __getitem__(self, index: int) -> ClipSample:
        """A clip of video index // samples_per_video. VOS/PET clips whose every object was lost to the
        crop/resize are re-drawn with the same RNG stream (deterministic) up to `max_prompt_retries` times."""
        if not 0 <= index < len(self):
            raise IndexError(f"ClipDataset index {index} out of range for {len(self)} items")
        rng = self.rng_for(index)
        for _ in range(self.max_prompt_retries):
            sample = self._draw(index, rng)
            if self.task not in _PROMPT_TASKS or sample.masks.shape[0] > 0:
                return sample
        video = self.dataset.videos[index // self.samples_per_video]
        raise ClipSamplingError(
            f"video {video.video_id!r}: no object survived the clip transform in {self.max_prompt_retries} draws"
        )

    def _draw(self, index: int, rng: np.random.Generator) -> ClipSample:
        video_index = index // self.samples_per_video
        video = self.dataset.videos[video_index]
        frame_indices = [int(f) for f in self.sampler.sample(video, rng)]
        pixels = self._reader(video_index, video).read(frame_indices)
        t = len(frame_indices)
        if pixels.dtype != np.uint8 or pixels.shape != (t, video.height, video.width, 3):
            raise CorruptMediaError(
                f"video {video.video_id!r} frames {frame_indices}: decoded {pixels.dtype} "
                f"{tuple(pixels.shape)}, expected uint8 ({t}, {video.height}, {video.width}, 3) "
                f"({video.frames.video_path or (video.frames.paths[0].parent if video.frames.paths else '')})"
            )
        anns = [self._annotation(video_index, video, f) for f in frame_indices]
        masks: torch.Tensor | RLEClipMasks
        if self.rle_masks and not self.with_semantic and all(a is None or a.label_map is None for a in anns):
            present = [None if a is None else set(a.track_ids) | {k for k, r in (a.rles or {}).items() if r is not None}
                       for a in anns]
            ids = self._target_ids(present)
            masks = RLEClipMasks(
                [[None if a is None or a.rles is None else a.rles.get(tid) for a in anns] for tid in ids],
                len(anns), video.height, video.width,
                where=lambda n, t: f"video {video.video_id!r} frame {frame_indices[t]} track {ids[n]}")
            semantic = None
        else:
            labels = [a.decode() if a is not None else None for a in anns]
            ids = self._target_ids([None if a is None else set(a.track_ids) | set(lab.masks)
                                    for a, lab in zip(anns, labels, strict=True)])
            masks = torch.from_numpy(self._stack_masks(video, frame_indices, labels, ids))  # checks mask sizes
            semantic = self._semantic(video, frame_indices, labels) if self.with_semantic else None
        # saves the transform a pass over the masks
        boxes = masks.boxes() if isinstance(masks, RLEClipMasks) else rle_boxes(anns, ids)

        reference = 0 if self.task in _PROMPT_TASKS else None
        out = self.transform(
            torch.from_numpy(pixels).permute(0, 3, 1, 2), masks, rng=rng,
            semantic=None if semantic is None else torch.from_numpy(semantic), reference_frame=reference,
            boxes=boxes, masks_as_rects=not self.prompts,  # prompt points are drawn from the masks below
        )
        keep = out.keep.tolist()
        kept_ids = [ids[k] for k in keep]
        class_ids, iscrowd = self._classes(video, kept_ids)

        points = prompt_frames = None
        if self.task in _PROMPT_TASKS:
            prompt_frames = torch.zeros(len(kept_ids), dtype=torch.int64)
        if self.prompts:
            points, prompt_frames = self._points(out.masks, prompt_frames)
        return ClipSample(
            frames=out.frames,
            masks=out.masks,
            track_ids=torch.tensor(kept_ids, dtype=torch.int64),
            class_ids=class_ids,
            pad_mask=out.pad_mask,
            semantic=out.semantic,
            points=points,
            prompt_frames=prompt_frames,
            iscrowd=iscrowd,
            video_id=video.video_id,
            dataset=self.dataset.name,
            frame_indices=frame_indices,
            orig_size=(video.height, video.width),
            colour=out.colour,
            device_resize=out.device_resize,
            mask_rects=out.mask_rects,
        )

    # ------------------------------------------------------------------ target builders
    def _target_ids(self, present: list[set[int] | None]) -> list[int]:
        """Target track ids from the tracks present in each clip frame (None: frame not annotated)."""
        if self.task in _PROMPT_TASKS:
            return sorted(present[0] or ())
        if self.task in _INSTANCE_TASKS:
            return sorted(set().union(*(p for p in present if p is not None)))
        return []

    def _stack_masks(
        self, video: VideoRecord, frames: list[int], labels: list[FrameLabels | None], ids: list[int]
    ) -> np.ndarray:
        """bool [N, T, H, W]. pycocotools decodes RLEs column-major; such masks are stacked as [N, T, W, H]
        and returned as a transposed view, so each one is a plain memory copy instead of a transposition."""
        decoded = [m for lab in labels if lab is not None for m in lab.masks.values()]
        column_major = bool(decoded) and decoded[0].flags.f_contiguous and not decoded[0].flags.c_contiguous
        shape = (len(ids), len(frames), video.height, video.width)
        masks = np.zeros(shape[:2] + shape[2:][::-1], dtype=bool) if column_major else np.zeros(shape, bool)
        for t, lab in enumerate(labels):
            if lab is None:
                continue
            for n, tid in enumerate(ids):
                m = lab.masks.get(tid)
                if m is None:
                    continue
                if m.shape != (video.height, video.width):
                    raise AnnotationFormatError(
                        f"video {video.video_id!r} frame {frames[t]} track {tid}: mask of size "
                        f"{m.shape[0]}x{m.shape[1]}, the video is {video.height}x{video.width}"
                    )
                masks[n, t] = m.T if column_major else m
        return masks.transpose(0, 1, 3, 2) if column_major else masks

    def _semantic(self, video: VideoRecord, frames: list[int], labels: list[FrameLabels | None]) -> np.ndarray:
        lut = self._semantic_lut
        if lut is None:
            raise AnnotationFormatError(f"dataset {self.dataset.name!r}: semantic maps need a category list")
        out = np.full((len(frames), video.height, video.width), IGNORE_LABEL, dtype=lut.dtype)
        for t, lab in enumerate(labels):
            if lab is None:
                continue
            sem = lab.semantic
            where = f"video {video.video_id!r} frame {frames[t]}"
            if sem is None:
                raise AnnotationFormatError(
                    f"{where}: the {self.dataset.format!r} annotation has no semantic map, which task "
                    f"{self.task!r} (with_semantic) needs"
                )
            if sem.shape != (video.height, video.width):
                raise AnnotationFormatError(
                    f"{where}: semantic map of size {sem.shape[0]}x{sem.shape[1]}, the video is "
                    f"{video.height}x{video.width}"
                )
            lo, hi = int(sem.min()), int(sem.max())
            if lo < 0 or hi >= lut.size:
                raise AnnotationFormatError(f"{where}: semantic id {lo if lo < 0 else hi} is not a category "
                                            f"of dataset {self.dataset.name!r}")
            mapped = lut[sem]
            if lut.dtype != np.uint8 and (mapped < 0).any():
                bad = sorted(set(np.unique(sem[mapped < 0]).tolist()))
                raise AnnotationFormatError(f"{where}: semantic ids {bad} are not categories of dataset "
                                            f"{self.dataset.name!r}")
            out[t] = mapped
        return out

    def _classes(self, video: VideoRecord, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.task not in _INSTANCE_TASKS:
            return torch.full((len(ids),), -1, dtype=torch.int64), torch.tensor(
                [bool(video.tracks[t].iscrowd) if t in video.tracks else False for t in ids], dtype=torch.bool)
        classes, crowd = [], []
        for tid in ids:
            info = video.tracks.get(tid)
            if info is None or info.category_id is None:
                raise AnnotationFormatError(f"video {video.video_id!r} track {tid}: no category "
                                            f"(task {self.task!r} needs one)")
            if info.category_id not in self._class_index:
                raise AnnotationFormatError(f"video {video.video_id!r} track {tid}: category {info.category_id} "
                                            f"is not in dataset {self.dataset.name!r}'s vocabulary")
            classes.append(self._class_index[info.category_id])
            crowd.append(bool(info.iscrowd))
        return torch.tensor(classes, dtype=torch.int64), torch.tensor(crowd, dtype=torch.bool)

    @staticmethod
    def _points(masks: torch.Tensor, prompt_frames: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Distance-transform peak per target in its prompt frame (VOS/PET: given; others: the first clip
        frame where the target is visible)."""
        n = masks.shape[0]
        if prompt_frames is None:
            visible = masks.view(torch.uint8).amax((-2, -1)).bool()  # [N, T]
            prompt_frames = torch.where(visible.any(1), visible.int().argmax(1), torch.full((n,), -1)).long()
        points = torch.full((n, 2), float("nan"), dtype=torch.float32)
        for k in range(n):
            f = int(prompt_frames[k])
            if f >= 0:
                points[k] = torch.tensor(distance_peak(masks[k, f].numpy()))
        return points, prompt_frames
