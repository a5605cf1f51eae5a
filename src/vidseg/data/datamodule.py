"""LightningDataModule: datasets from config (official layout, or the built-in synthetic data), training clips
through the multi-task batch sampler, one validation loader of whole videos per dataset."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from vidseg.data.collate import collate_clips
from vidseg.data.dataset_spec import require, validate_specs
from vidseg.data.formats import get_format
from vidseg.data.handover import SlotHandover
from vidseg.data.records import Batch, ClipSample, DatasetRecord, VideoRecord
from vidseg.data.worker_memory import WorkerMemory

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


class RankShard(Sampler[int]):
    """Videos rank, rank + world, ... in order: each rank validates its own videos, none twice (the metrics
    merge across ranks), unlike DistributedSampler which pads with repeats."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, length, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


class CollateByDataset:
    """Collate a micro-batch (all from one dataset) as a Batch of that dataset's task; picklable, so it also
    works with the spawn/forkserver worker start methods."""

    def __init__(self, tasks: Mapping[str, str]) -> None:
        self.tasks = dict(tasks)

    def __call__(self, samples: list[ClipSample]) -> Batch:
        return collate_clips(samples, self.tasks[samples[0].dataset])


def _first(items: list[EvalVideo]) -> EvalVideo:
    return items[0]


class VidsegDataModule(pl.LightningDataModule):
    """Builds every configured dataset. `datasets`: name -> spec (see conf/data/*.yaml; the keys are checked by
    `vidseg.data.dataset_spec.validate_specs`)."""

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
        max_val_videos: int | None = None,
        handover_slots: int = 4,
        handover_slot_mb: float = 16.0,
        worker_mmap_threshold_mb: int = 64,
        worker_trim_threshold_mb: int = 256,
        resize_on_device: bool | str = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(resize_on_device, bool) and resize_on_device != "auto":
            raise ValueError(f"data.resize_on_device must be true, false or auto, got {resize_on_device!r}")
        # training crops are flipped, resized and padded (and RLE masks painted) after the batch reaches the device
        # (`data.frame_resize`, `data.mask_rects`); auto: when that device is an accelerator
        self.resize_on_device = resize_on_device
        if not isinstance(handover_slots, int) or isinstance(handover_slots, bool) or handover_slots < 0:
            raise ValueError(f"data.handover_slots must be an int >= 0 (0: torch's own hand-over), got "
                             f"{handover_slots!r}")
        if not handover_slot_mb > 0:
            raise ValueError(f"data.handover_slot_mb must be positive, got {handover_slot_mb!r}")
        # training batches reach the main process through reused shared-memory slots (`data.handover`)
        self.handover_slots, self.handover_slot_mb = handover_slots, float(handover_slot_mb)
        # workers' glibc heap thresholds (`data.worker_memory`); both 0 keep glibc's adaptive ones
        self.worker_memory: WorkerMemory | None = None
        if worker_mmap_threshold_mb or worker_trim_threshold_mb:
            try:
                self.worker_memory = WorkerMemory(worker_mmap_threshold_mb, worker_trim_threshold_mb)
            except ValueError as e:
                raise ValueError(f"data.worker_mmap_threshold_mb / data.worker_trim_threshold_mb: {e} (both 0: "
                                 "glibc's adaptive thresholds)") from e
        self.max_val_videos = max_val_videos  # cap on every dataset's val videos (its eval.max_videos wins)
        # every spec is checked (keys, format, task, reader options), also those of tasks this run does not train
        specs = validate_specs(datasets, tasks)
        self.specs = {k: v for k, v in specs.items() if tasks is None or v["task"] in tasks}
        if not self.specs:
            raise ValueError(f"no dataset configured for tasks {tasks}; data.datasets has {sorted(datasets)}")
        self.batch_size, self.num_workers = batch_size, num_workers
        self.steps_per_epoch, self.seed = steps_per_epoch, seed
        self.accumulate, self.chunk, self.samples_per_video = accumulate, chunk, samples_per_video
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.train_records: dict[str, DatasetRecord] = {}
        self.val_records: dict[str, DatasetRecord] = {}
        self.batch_sampler: Any = None
        self._resume_micro: int | None = None
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
        sampler = instantiate(require(name, spec, "sampler"))
        transform = instantiate(require(name, spec, "train_transform"), resize_on_device=self.device_resizes())
        return ClipDataset(
            self.train_records[name], sampler, transform, task=task, samples_per_video=self.samples_per_video,
            seed=self.seed, with_semantic=bool(spec.get("with_semantic", False)),
            prompts=task in ("vos", "pet"),
        )

    def device_resizes(self) -> bool:
        """Whether training crops are finished on the device: `data.resize_on_device`, where auto means the trainer's
        device is not the CPU (without a trainer: whether CUDA is available). On the CPU it would only move the
        workers' resize into the training process."""
        if self.resize_on_device != "auto":
            return bool(self.resize_on_device)
        strategy = self._trainer_attr("strategy", None)
        device = getattr(strategy, "root_device", None)
        return torch.cuda.is_available() if device is None else torch.device(device).type != "cpu"

    def _trainer_attr(self, name: str, default: Any) -> Any:
        trainer = getattr(self, "trainer", None)
        return getattr(trainer, name, default) if trainer is not None else default

    def train_dataloader(self) -> DataLoader:
        """Clips of every dataset through the multi-task batch sampler. Rank, world size and gradient
        accumulation come from the trainer; after a restore the sampler continues at the checkpoint's
        micro-batch (see `state_dict`)."""
        from vidseg.data.multitask import MultiTaskBatchSampler

        self.load_records()
        names = list(self.specs)
        parts = [self._clip_dataset(n) for n in names]
        concat = ConcatDataset(parts)

        def set_clip_epoch(epoch: int) -> None:
            for part in parts:
                part.set_epoch(epoch)

        accumulate = int(self._trainer_attr("accumulate_grad_batches", self.accumulate) or 1)
        self.batch_sampler = MultiTaskBatchSampler(
            [len(p) for p in parts], [float(self.specs[n].get("weight", 1.0)) for n in names], self.batch_size,
            self.steps_per_epoch, seed=self.seed, rank=int(self._trainer_attr("global_rank", 0)),
            world_size=int(self._trainer_attr("world_size", 1)), chunk=self.chunk, accumulate=accumulate,
            on_epoch=set_clip_epoch,
        )
        if self._resume_micro is not None:
            self.batch_sampler.resume_from(self._resume_micro)
            self._resume_micro = None
        # the epoch Lightning is in (restored with the checkpoint); workers may prefetch before `set_epoch`
        self.batch_sampler.set_epoch(int(self._trainer_attr("current_epoch", self.batch_sampler.epoch)))
        set_clip_epoch(self.batch_sampler.epoch)
        collate: Any = CollateByDataset({n: self.task_of(n) for n in names})
        if self.num_workers > 0 and self.handover_slots > 0:
            collate = SlotHandover(collate, self.num_workers, self.handover_slots, self.handover_slot_mb)
        return DataLoader(
            concat, batch_sampler=self.batch_sampler, num_workers=self.num_workers, collate_fn=collate,
            persistent_workers=self.num_workers > 0, worker_init_fn=self.worker_memory,
        )

    def trained_micro_batches(self) -> int:
        """Micro-batches the trainer has fully processed (not how far the loader has prefetched)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0
        return int(trainer.fit_loop.epoch_loop.batch_progress.total.processed)

    def state_dict(self) -> dict[str, Any]:
        """Sampler position for the checkpoint: the micro-batch training continues at."""
        return {"micro_batch": self.trained_micro_batches(), "epoch": int(self._trainer_attr("current_epoch", 0))}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_micro = int(state_dict["micro_batch"])

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
                                  ev.get("max_videos", self.max_val_videos))
            shard = RankShard(len(ds), int(self._trainer_attr("global_rank", 0)),
                              int(self._trainer_attr("world_size", 1)))
            loaders.append(DataLoader(ds, batch_size=1, sampler=shard, collate_fn=_first, num_workers=0))
        return loaders
