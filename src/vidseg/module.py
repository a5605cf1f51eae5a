"""The LightningModule: one shared TarViS network + a ModuleDict of tasks; the batch says which task runs.

training_step:  feats = model.encode(frames); queries = task.init_queries(...); out = model.decode(...);
                losses = task.loss(...)
validation:     each val loader is one dataset; its task predicts whole videos and updates the dataset's metric.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from vidseg.data.records import Batch
from vidseg.tasks.base import Task

log = logging.getLogger(__name__)

NO_DECAY_KEYWORDS = ("norm", "bn", "embed", "query", "queries", "level_embed", "semantic_bank", "pos")


def _is_no_decay(name: str, param: nn.Parameter) -> bool:
    """TarViS exclusions: norm layers, embeddings, query inits/embeds, level embeddings (and biases/1-d)."""
    lname = name.lower()
    return param.ndim <= 1 or any(k in lname for k in NO_DECAY_KEYWORDS)


class VidsegModule(pl.LightningModule):
    """Trains the shared model on batches of any configured task and validates each dataset with its metric."""

    def __init__(
        self,
        model: nn.Module,
        tasks: Mapping[str, Task],
        optim: Mapping[str, Any],
        dataset_tasks: Mapping[str, str] | None = None,
        val_datasets: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.tasks = nn.ModuleDict(dict(tasks))
        self.optim_cfg = dict(optim)
        self.dataset_tasks = dict(dataset_tasks or {})
        self.val_datasets = list(val_datasets or [])
        self.metrics: dict[str, Any] = {}
        self.final_metrics: dict[str, dict[str, float]] = {}
        self.val_records: dict[str, Any] = {}
        self.skipped_steps = 0
        self._t_last: float | None = None

    # ------------------------------------------------------------------ training
    def forward_task(self, batch: Batch) -> tuple[dict[str, torch.Tensor], Any]:
        task: Task = self.tasks[batch.task]
        feats = self.model.encode(batch.frames)
        queries = task.init_queries(self.model, feats, batch)
        out = self.model.decode(feats, queries)
        losses = task.loss(self.model, feats, queries, out, batch)
        return losses, out

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        self.tasks[batch.task].current_step = self.global_step
        losses, _ = self.forward_task(batch)
        total = sum(losses.values())
        # parameters of other tasks take part with weight 0 so DDP sees every parameter used
        unused = [p for name, t in self.tasks.items() if name != batch.task for p in t.parameters() if p.requires_grad]
        if unused:
            total = total + 0.0 * sum(p.sum() for p in unused)
        if not torch.isfinite(total):
            self.skipped_steps += 1
            max_skips = int(self.optim_cfg.get("max_nonfinite_skips", 10))
            videos = [s.video_id for s in batch.samples]
            msg = f"non-finite loss at step {self.global_step} (task {batch.task}, videos {videos})"
            if self.skipped_steps > max_skips:
                raise FloatingPointError(f"{msg}: more than {max_skips} non-finite steps, stopping")
            log.warning("%s: step skipped (%d so far)", msg, self.skipped_steps)
            return None
        bs = len(batch)
        for k, v in losses.items():
            self.log(f"train/{batch.task}/{k}", v.detach(), batch_size=bs)
        self.log(f"train/{batch.task}/loss", total.detach(), prog_bar=True, batch_size=bs)
        opt = self.optimizers(use_pl_optimizer=False) if self._trainer is not None else None
        if opt is not None:
            for i, group in enumerate(opt.param_groups[:2]):
                self.log(f"train/lr_group{i}", group["lr"], batch_size=bs)
        now = time.perf_counter()
        if self._t_last is not None:
            self.log("train/clips_per_s", bs / max(now - self._t_last, 1e-9), batch_size=bs)
        self._t_last = now
        return total

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        clip = self.optim_cfg.get("clip_norm")
        if clip:
            norm = torch.nn.utils.clip_grad_norm_(self.parameters(), float(clip))
            self.log("train/grad_norm", norm, batch_size=1)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optim_cfg
        lr, wd = float(cfg["lr"]), float(cfg["weight_decay"])
        bb_mult = float(cfg.get("backbone_lr_mult", 0.1))
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            key = (name.startswith("model.backbone."), _is_no_decay(name, p))
            groups.setdefault(key, []).append(p)
        param_groups = [
            {"params": ps, "lr": lr * (bb_mult if is_bb else 1.0), "weight_decay": 0.0 if no_wd else wd}
            for (is_bb, no_wd), ps in groups.items()
        ]
        opt = torch.optim.AdamW(param_groups, lr=lr, betas=tuple(cfg.get("betas", (0.9, 0.999))))
        warmup = int(cfg.get("warmup_steps", 0))
        milestones = [int(m) for m in cfg.get("milestones", [])]
        gamma = float(cfg.get("gamma", 0.1))

        def factor(step: int) -> float:
            f = gamma ** sum(step >= m for m in milestones)
            if warmup and step < warmup:
                f *= (step + 1) / warmup
            return f

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ validation
    def attach_val(self, records: Mapping[str, Any]) -> None:
        """Give the module the val DatasetRecords (GT) of every validated dataset, in loader order."""
        self.val_records = dict(records)
        self.val_datasets = list(records)

    def on_validation_epoch_start(self) -> None:
        self.metrics = {}
        for name in self.val_datasets:
            task: Task = self.tasks[self.dataset_tasks[name]]
            self.metrics[name] = task.make_metric(self.val_records[name])

    def validation_step(self, video: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        name = self.val_datasets[dataloader_idx]
        task: Task = self.tasks[self.dataset_tasks[name]]
        gt = self.val_records[name].videos[video.index]
        pred = task.predict_video(self.model, video, gt, name)
        self.metrics[name].update(pred, gt)

    def on_validation_epoch_end(self) -> None:
        results: dict[str, dict[str, float]] = {}
        for name, metric in self.metrics.items():
            values = {k: float(v) for k, v in metric.compute().items() if _is_scalar(v)}
            task_name = self.dataset_tasks[name]
            results[f"{task_name}/{name}"] = values
            for k, v in values.items():
                if math.isfinite(v):
                    self.log(f"val/{task_name}/{name}/{k}", v, batch_size=1, sync_dist=False)
        self.final_metrics = _by_task(results, self.dataset_tasks, self.val_datasets)


def _is_scalar(v: Any) -> bool:
    if isinstance(v, torch.Tensor):
        return v.numel() == 1
    return isinstance(v, int | float)


def _by_task(results: dict, dataset_tasks: Mapping[str, str], names: list[str]) -> dict[str, dict[str, float]]:
    """metrics.json layout: {task: {official metric: value}} (first dataset of the task), plus
    {task/dataset: {...}} for every dataset."""
    out: dict[str, dict[str, float]] = {}
    for name in names:
        task = dataset_tasks[name]
        vals = results.get(f"{task}/{name}", {})
        out.setdefault(task, dict(vals))
        out[f"{task}/{name}"] = dict(vals)
    return out
