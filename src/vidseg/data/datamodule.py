"""LightningDataModule: datasets from config (official layout, or the built-in synthetic data), training clips
through the multi-task batch sampler, one validation loader of whole videos per dataset."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from vidseg.data.formats import get_format
from vidseg.data.records import Batch, ClipSample, DatasetRecord, VideoRecord, collate_clips

log = logging.getLogger(__name__)


@dataclass
class EvalVideo:
    """One whole video for evaluation: uint8 frames resized (short side) and padded to a multiple of 64."""

    dataset: str
    index: int  # index of the video in the dataset's val record
    frames: torch.Tensor  # uint8 [T, 3, Hp, Wp]
    valid_hw: tuple[int, int]  # size before padding
    orig_hw: tuple[int, int]
    meta: dict[str, Any] = field(default_factory=dict)


def resize_pad_frames(frames: np.ndarray, short: int, max_dim: int, multiple: int = 64) -> tuple[torch.Tensor, tuple]:
    """uint8 [T, H, W, 3] -> uint8 [T, 3, Hp, Wp] with short side `short` (long ≤ max_dim), padded with 128."""
    t, h, w = frames.shape[:3]
    scale = min(short / min(h, w), max_dim / max(h, w))
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    if (nh, nw) != (h, w):
        x = F.interpolate(x.float(), size=(nh, nw), mode="bilinear", align_corners=False)
        x = x.round().clamp_(0, 255).to(torch.uint8)
    ph, pw = -nh % multiple, -nw % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), value=128)
    return x.contiguous(), (nh, nw)


class EvalVideoDataset(Dataset):
    """Whole videos of a DatasetRecord (small videos; long ones are streamed by the inference module)."""

    def __init__(self, name: str, record: DatasetRecord, short: int, max_dim: int, max_videos: int | None = None):
        self.name, self.record, self.short, self.max_dim = name, record, short, max_dim
        self.count = len(record.videos) if max_videos is None else min(max_videos, len(record.videos))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> EvalVideo:
        from vidseg.data.video import open_frames

        video: VideoRecord = self.record.videos[i]
        reader = open_frames(video.frames)
        try:
            frames = reader.read(list(range(len(video.frames))))
        finally:
            reader.close()
        x, valid = resize_pad_frames(frames, self.short, self.max_dim)
        return EvalVideo(self.name, i, x, valid, (video.height, video.width))


def _first(items: list[EvalVideo]) -> EvalVideo:
    return items[0]


class VidsegDataModule(pl.LightningDataModule):
    """Builds every configured dataset. `datasets`: name -> spec (see conf/data/*.yaml)."""

    def __init__(
        self,
        datasets: Mapping[str, Any],
        batch_size: int = 4,
        num_workers: int = 0,
        steps_per_epoch: int = 1000,
        cache_dir: str | None = None,
        seed: int = 0,
        accumulate: int = 1,
        chunk: int = 1,
        tasks: list[str] | None = None,
        samples_per_video: int = 1000,
    ) -> None:
        super().__init__()
        self.specs = {k: v for k, v in datasets.items() if tasks is None or v["task"] in tasks}
        if not self.specs:
            raise ValueError(f"no dataset configured for tasks {tasks}; data.datasets has {sorted(datasets)}")
        self.batch_size, self.num_workers = batch_size, num_workers
        self.steps_per_epoch, self.seed = steps_per_epoch, seed
        self.accumulate, self.chunk, self.samples_per_video = accumulate, chunk, samples_per_video
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.train_records: dict[str, DatasetRecord] = {}
        self.val_records: dict[str, DatasetRecord] = {}
        self.batch_sampler = None
        self._loaded = False

    # ------------------------------------------------------------------ records
    def dataset_root(self, name: str) -> Path:
        spec = self.specs[name]
        if spec.get("root"):
            return Path(spec["root"])
        from vidseg.data.synthetic import ensure_synthetic

        cache = self.cache_dir or Path.home() / ".cache" / "vidseg"
        return Path(ensure_synthetic(spec["format"], cache / "synthetic", **dict(spec.get("synthetic") or {})))

    def load_records(self) -> None:
        """Read every dataset's annotations (no frame is decoded). Safe to call more than once."""
        if self._loaded:
            return
        for name, spec in self.specs.items():
            fmt = get_format(spec["format"])
            root = self.dataset_root(name)
            options = dict(spec.get("options") or {})
            self.train_records[name] = fmt.read(root, spec.get("train_split", "train"), **options)
            self.train_records[name].name = name  # samples carry the config key as their dataset
            if spec.get("val_split"):
                self.val_records[name] = fmt.read(root, spec["val_split"], **options)
                self.val_records[name].name = name
            log.info("dataset %s: %d train videos, %d val videos", name, len(self.train_records[name].videos),
                     len(self.val_records.get(name).videos) if name in self.val_records else 0)
        self._loaded = True

    def vocabularies(self) -> dict[str, list]:
        self.load_records()
        return {name: rec.categories for name, rec in self.train_records.items()}

    def task_of(self, name: str) -> str:
        return str(self.specs[name]["task"])

    def prepare_data(self) -> None:
        for name in self.specs:
            self.dataset_root(name)

    def setup(self, stage: str | None = None) -> None:
        self.load_records()

    # ------------------------------------------------------------------ training
    def _clip_dataset(self, name: str) -> Dataset:
        from vidseg.data.clip_dataset import ClipDataset

        spec = self.specs[name]
        task = self.task_of(name)
        sampler = instantiate(spec["sampler"])
        transform = instantiate(spec["train_transform"])
        return ClipDataset(
            self.train_records[name], sampler, transform, task=task, samples_per_video=self.samples_per_video,
            seed=self.seed, with_semantic=bool(spec.get("with_semantic", False)),
            prompts=task in ("vos", "pet"),
        )

    def train_dataloader(self) -> DataLoader:
        from vidseg.data.multitask import MultiTaskBatchSampler

        self.load_records()
        names = list(self.specs)
        parts = [self._clip_dataset(n) for n in names]
        concat = ConcatDataset(parts)
        rank = self.trainer.global_rank if self.trainer is not None else 0
        world = self.trainer.world_size if self.trainer is not None else 1
        self.batch_sampler = MultiTaskBatchSampler(
            [len(p) for p in parts], [float(self.specs[n].get("weight", 1.0)) for n in names], self.batch_size,
            self.steps_per_epoch, seed=self.seed, rank=rank, world_size=world, chunk=self.chunk,
            accumulate=self.accumulate,
        )
        tasks = {n: self.task_of(n) for n in names}

        def collate(samples: list[ClipSample]) -> Batch:
            return collate_clips(samples, tasks[samples[0].dataset])

        return DataLoader(
            concat, batch_sampler=self.batch_sampler, num_workers=self.num_workers, collate_fn=collate,
            persistent_workers=self.num_workers > 0,
        )

    # ------------------------------------------------------------------ validation
    def val_names(self) -> list[str]:
        self.load_records()
        return [n for n in self.specs if n in self.val_records]

    def val_dataloader(self) -> list[DataLoader]:
        loaders = []
        for name in self.val_names():
            spec = self.specs[name]
            ev = spec.get("eval") or {}
            ds = EvalVideoDataset(name, self.val_records[name], int(ev.get("short", 96)), int(ev.get("max_dim", 1333)),
                                  ev.get("max_videos"))
            loaders.append(DataLoader(ds, batch_size=1, collate_fn=_first, num_workers=0))
        return loaders
