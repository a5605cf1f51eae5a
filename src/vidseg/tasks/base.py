"""The Task protocol: what a task owns, and the registry of tasks built from Hydra's `conf/task/*.yaml`.

A task is an `nn.Module` (its parameters — task-specific query inits, encoders — live in the checkpoint next
to the shared model, which is what makes hot-swapping possible). It owns, in ONE file per task:
- `init_queries`: how its targets become decoder queries,
- `loss`: its matcher and criterion over every decoder output (deep supervision),
- `predict_video`: post-processing and stitching of clip outputs into a `VideoPrediction`,
- `make_metric`: the benchmark metric bound to a dataset,
- `train_sampler`: its default clip sampler.
Adding a task = one new file + one config; the model core never names a task.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from vidseg.data.records import Batch, Category, DatasetRecord, VideoPrediction, VideoRecord

if TYPE_CHECKING:
    import torchmetrics

    from vidseg.model.tarvis import TarViS


class Task(nn.Module, ABC):
    """Base class of every task. Subclasses set `name` and the kinds of targets they need."""

    name: ClassVar[str] = ""
    needs_semantic: ClassVar[bool] = False  # ClipSample.semantic is required
    needs_prompts: ClassVar[bool] = False  # VOS/PET: targets = objects of the reference frame

    def __init__(self) -> None:
        super().__init__()
        self.vocabularies: dict[str, list[Category]] = {}

    def setup(self, model: TarViS, vocabularies: Mapping[str, list[Category]]) -> None:
        """Create dataset-dependent parameters (e.g. semantic queries per vocabulary). Idempotent."""
        self.vocabularies.update(vocabularies)

    @abstractmethod
    def init_queries(self, model: TarViS, feats: Any, batch: Batch) -> Any:
        """Build the QuerySet for this batch from the encoded features."""

    @abstractmethod
    def loss(self, model: TarViS, feats: Any, queries: Any, out: Any, batch: Batch) -> dict[str, torch.Tensor]:
        """Weighted loss terms (each already multiplied by its weight); the total is their sum."""

    @abstractmethod
    @torch.no_grad()
    def predict_video(self, model: TarViS, video: Any, record: VideoRecord, dataset: str) -> VideoPrediction:
        """Run the model over one evaluation video (`video`: an `EvalVideo` from the datamodule)."""

    @abstractmethod
    def make_metric(self, dataset: DatasetRecord) -> torchmetrics.Metric:
        """The official metric of `dataset` for this task (update(pred, gt) / compute() -> dict)."""

    def train_sampler(self, num_frames: int = 3, factor: float = 7.5, consecutive: bool = False) -> Any:
        """The task's default clip sampler (instance-style; VOS/PET override)."""
        from vidseg.data.sampling import InstanceClipSampler

        return InstanceClipSampler(num_frames=num_frames, factor=factor, consecutive=consecutive)


def build_tasks(task_cfgs: Mapping[str, Any]) -> dict[str, Task]:
    """Instantiate every task of `cfg.tasks` (a mapping name -> node with `_target_`); names must match."""
    from hydra.utils import instantiate

    tasks: dict[str, Task] = {}
    for name, node in task_cfgs.items():
        task = instantiate(node)
        if not isinstance(task, Task):
            raise TypeError(f"tasks.{name}: _target_ must build a vidseg Task, got {type(task).__name__}")
        if task.name != name:
            raise ValueError(f"tasks.{name}: config key does not match the task's name {task.name!r}")
        tasks[name] = task
    if not tasks:
        raise ValueError("no task configured: choose one with task=vis|vss|vps|vos|pet|multi")
    return tasks


class MetricGroup:
    """Several metrics of one dataset behind the metric interface (update(pred, gt) / compute() -> dict):
    e.g. VPQ and STQ for VIPSeg. Keys must not collide."""

    def __init__(self, metrics: Mapping[str, Any]) -> None:
        self.metrics = dict(metrics)
        self._process_group: Any = None

    @property
    def process_group(self) -> Any:
        """The process group every member syncs over (torchmetrics' attribute; None = the default group)."""
        return self._process_group

    @process_group.setter
    def process_group(self, group: Any) -> None:
        self._process_group = group
        for metric in self.metrics.values():
            metric.process_group = group

    def update(self, pred: VideoPrediction, gt: VideoRecord) -> None:
        for metric in self.metrics.values():
            metric.update(pred, gt)

    def compute(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, metric in self.metrics.items():
            values = metric.compute()
            clash = set(values) & set(out)
            if clash:
                raise KeyError(f"MetricGroup: metric {name!r} repeats keys {sorted(clash)}")
            out.update(values)
        return out

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()
