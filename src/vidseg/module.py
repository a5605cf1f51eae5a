"""The LightningModule: one shared TarViS network + a ModuleDict of tasks; the batch says which task runs.

training_step:  feats = model.encode(frames); queries = task.init_queries(...); out = model.decode(...);
                losses = task.loss(...)
validation:     each val loader is one dataset; its task predicts whole videos and updates the dataset's metric;
                the first videos of each dataset are drawn as mask overlays for the loggers (utils/media.py).

Exact resume: the global RNGs (torch, numpy, python) are re-seeded before every micro-batch from
(seed, rank, micro-batch number), so no RNG state has to survive a restart; the sampler continues from the
trainer's progress (datamodule), model/optimizer/scheduler/counters come from the checkpoint.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from vidseg.data.records import Batch
from vidseg.model.tarvis import model_autocast
from vidseg.tasks.base import Task

log = logging.getLogger(__name__)

NO_DECAY_KEYWORDS = ("norm", "bn", "embed", "query", "queries", "level_embed", "semantic_bank", "pos")


def _is_no_decay(name: str, param: nn.Parameter) -> bool:
    """TarViS exclusions: norm layers, embeddings, query inits/embeds, level embeddings (and biases/1-d)."""
    lname = name.lower()
    return param.ndim <= 1 or any(k in lname for k in NO_DECAY_KEYWORDS)


def _use_fused(option: Any, params: list[nn.Parameter]) -> bool | None:
    """`optim.fused`: true / false, or "auto" = torch's fused AdamW kernel when every parameter is a floating
    tensor on the CPU or a CUDA device (one kernel per step instead of a loop over ~200 small tensors: the tiny
    model's optimizer step took 10.4 ms with the loop, 2.9 ms fused, on one CPU thread: bench_train_step.py)."""
    if option == "auto":
        return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) or None
    if isinstance(option, bool):
        return option or None
    raise ValueError(f"optim.fused: expected true, false or 'auto', got {option!r}")


def metric_sync_group() -> Any | None:
    """The process group the validation metrics sync their states over: None (the default group) where that
    group moves CPU tensors (gloo, mpi, or a "cpu:gloo,cuda:nccl" pair), else a new gloo group of the same ranks.
    The metrics keep their states on the CPU (RLE masks, confusion matrices) and NCCL gathers CUDA tensors only:
    torchmetrics' sync over it fails with "No backend type associated with device type cpu". Collective: every
    rank must call it at the same point."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    backend = str(dist.get_backend())
    if backend in ("gloo", "mpi") or "cpu:" in backend:
        return None
    return dist.new_group(backend="gloo")


class VidsegModule(pl.LightningModule):
    """Trains the shared model on batches of any configured task and validates each dataset with its metric."""

    def __init__(
        self,
        model: nn.Module,
        tasks: Mapping[str, Task],
        optim: Mapping[str, Any],
        dataset_tasks: Mapping[str, str] | None = None,
        val_datasets: list[str] | None = None,
        seed: int | None = None,
        max_nonfinite_skips: int | None = None,
        media_videos: int = 0,
        media_max_frames: int = 16,
    ) -> None:
        """seed: re-seed the global RNGs per micro-batch from (seed, rank, micro-batch) — None keeps them
        running; max_nonfinite_skips: non-finite steps skipped before training stops (default: optim's
        `max_nonfinite_skips`, else 10); media_videos: videos per dataset drawn as overlays each validation."""
        super().__init__()
        self.model = model
        self.tasks = nn.ModuleDict(dict(tasks))
        self.optim_cfg = dict(optim)
        self.dataset_tasks = dict(dataset_tasks or {})
        self.val_datasets = list(val_datasets or [])
        self.metrics: dict[str, Any] = {}
        self.final_metrics: dict[str, dict[str, float]] = {}
        self.val_records: dict[str, Any] = {}
        self.seed = seed
        if max_nonfinite_skips is None:
            max_nonfinite_skips = int(self.optim_cfg.get("max_nonfinite_skips", 10))
        self.max_nonfinite_skips = int(max_nonfinite_skips)
        self.media_videos, self.media_max_frames = int(media_videos), int(media_max_frames)
        self.skipped_steps = 0
        self._metric_group: Any = None  # metric_sync_group(), made at the first validation
        self._metric_group_made = False
        self._t_last: float | None = None
        self._window_has_grads = False

    # ------------------------------------------------------------------ training
    def forward_task(self, batch: Batch) -> tuple[dict[str, torch.Tensor], Any]:
        """The one place a training forward happens: encode → task queries → decode (with the task's query
        adders, e.g. GvSeg SPA) → task loss terms."""
        task: Task = self.tasks[batch.task]
        if getattr(batch, "device_resize", None) is not None:  # crops not yet resized (Lightning's move does it)
            batch = batch.to(batch.frames.device)
        colour = getattr(batch, "colour", None)
        if colour is None:
            feats = self.model.encode(batch.frames)
        else:  # training colour jitter, drawn per clip by the data pipeline, applied on the device
            feats = self.model.encode(batch.frames, colour=colour, valid=batch.pad_mask)
        # under the model's own bf16 autocast (`model.precision: bf16`) the task's query encoders and losses run
        # with autocast too, as under Lightning's bf16-mixed, so bf16 features never meet fp32 weights unprepared
        with model_autocast(self.model, batch.frames.device):
            queries = task.init_queries(self.model, feats, batch)
            out = self.model.decode(feats, queries, getattr(queries, "query_adders", None))
            losses = task.loss(self.model, feats, queries, out, batch)
        return losses, out

    def micro_batch_number(self) -> int:
        """Micro-batches started since the beginning of training (continues across a resume)."""
        if self._trainer is None:
            return 0
        return int(self.trainer.fit_loop.epoch_loop.total_batch_idx)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.seed is not None:
            seed_step_rngs(self.seed, self.global_rank, self.micro_batch_number())
        accumulate = int(self.trainer.accumulate_grad_batches) if self._trainer is not None else 1
        if batch_idx % max(1, accumulate) == 0:
            self._window_has_grads = False  # first micro-batch of an optimizer step

    def _zero_touching_all_params(self, like: torch.Tensor) -> torch.Tensor:
        """0 · (one element of every trainable parameter): a loss term with a zero gradient for every parameter,
        so DDP's reducer sees all of them (other tasks' heads, unused branches) without
        find_unused_parameters' graph walk each step."""
        touched = torch.stack([p.reshape(-1)[0] for p in self.parameters() if p.requires_grad])
        return 0.0 * touched.sum().to(like.dtype)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        self.tasks[batch.task].current_step = self.global_step
        losses, _ = self.forward_task(batch)
        total = sum(losses.values())
        if not self._all_ranks_finite(total):
            self._skip_nonfinite(batch)
            if self._distributed():
                # Lightning cannot skip a DDP step (returning None): backward a zero loss instead, which keeps
                # the all-reduce schedule (gradients of the step's other micro-batches stay averaged); a step
                # with no finite micro-batch drops its gradients in on_before_optimizer_step
                return self._zero_touching_all_params(total)
            return None  # no backward; Lightning skips it
        if self._distributed():
            total = total + self._zero_touching_all_params(total)
        self._window_has_grads = True
        bs = len(batch)
        self.log(f"train/{batch.task}/loss", total.detach(), prog_bar=True, batch_size=bs)
        now = time.perf_counter()
        if self._logs_this_step():
            for k, v in losses.items():
                self.log(f"train/{batch.task}/{k}", v.detach(), batch_size=bs)
            self.log("train/loss", total.detach(), batch_size=bs)
            opt = self.optimizers(use_pl_optimizer=False) if self._trainer is not None else None
            if opt is not None:
                for i, group in enumerate(opt.param_groups):
                    self.log(f"train/lr/{group.get('name', i)}", group["lr"], batch_size=bs)
            if self._t_last is not None:
                world = self.trainer.world_size if self._trainer is not None else 1
                self.log("train/clips_per_s", bs * world / max(now - self._t_last, 1e-9), batch_size=bs)
        self._t_last = now
        return total

    def _logs_this_step(self) -> bool:
        """Whether the loggers write this step (Lightning's own rule: every `log_every_n_steps` and the last step).
        The other steps' values would be dropped anyway, and each `self.log` costs about 1.3 ms on the CPU: the
        tiny recipe's 13 calls per step were 9 % of its step time."""
        if self._trainer is None:
            return True
        connector = getattr(self.trainer, "_logger_connector", None)
        return bool(getattr(connector, "should_update_logs", True))

    def _distributed(self) -> bool:
        """A process group is up. Not `world_size > 1`: Lightning's DDP wraps the model on one device too, and
        its reducer then wants a gradient for every parameter just the same."""
        return dist.is_available() and dist.is_initialized()

    def _all_ranks_finite(self, total: torch.Tensor) -> bool:
        """True when the loss is finite on every rank (one tiny all-reduce under DDP so all ranks skip together
        and no rank waits in a backward the others skipped)."""
        finite = torch.isfinite(total.detach()).to(torch.float32).reshape(1)
        if self._distributed():
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item() > 0)

    def _skip_nonfinite(self, batch: Batch) -> None:
        self.skipped_steps += 1
        videos = [s.video_id for s in batch.samples]
        msg = (f"non-finite loss at step {self.global_step} (micro-batch {self.micro_batch_number()}, task "
               f"{batch.task}, dataset {batch.dataset}, videos {videos})")
        self.log("train/skipped_steps", float(self.skipped_steps), batch_size=len(batch))
        if self.skipped_steps > self.max_nonfinite_skips:
            raise FloatingPointError(f"{msg}: more than {self.max_nonfinite_skips} non-finite steps, stopping")
        log.warning("%s: step skipped (%d so far)", msg, self.skipped_steps)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vidseg"] = {"skipped_steps": self.skipped_steps}
        config = getattr(self, "run_config", None)
        if config is not None:  # evaluate/predict rebuild the model and tasks from it (plain types only)
            checkpoint["vidseg_config"] = config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.skipped_steps = int(checkpoint.get("vidseg", {}).get("skipped_steps", 0))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if not self._window_has_grads:
            # every micro-batch of this step was non-finite: no update at all (AdamW skips parameters without a
            # gradient, so neither its moments nor weight decay move)
            for p in self.parameters():
                p.grad = None
            return
        clip = self.optim_cfg.get("clip_norm")
        if clip:
            norm = torch.nn.utils.clip_grad_norm_(self.parameters(), float(clip))
            if self._logs_this_step():
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
            {"params": ps, "lr": lr * (bb_mult if is_bb else 1.0), "weight_decay": 0.0 if no_wd else wd,
             "name": f"{'backbone' if is_bb else 'rest'}{'_no_wd' if no_wd else ''}"}
            for (is_bb, no_wd), ps in groups.items()
        ]
        fused = _use_fused(cfg.get("fused", "auto"), [p for g in param_groups for p in g["params"]])
        opt = torch.optim.AdamW(param_groups, lr=lr, betas=tuple(cfg.get("betas", (0.9, 0.999))), fused=fused)
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
        if not self._metric_group_made:  # once: a collective, and all ranks validate together
            self._metric_group, self._metric_group_made = metric_sync_group(), True
        self.metrics = {}
        for name in self.val_datasets:
            task: Task = self.tasks[self.dataset_tasks[name]]
            self.metrics[name] = task.make_metric(self.val_records[name])
            if self._metric_group is not None:
                self.metrics[name].process_group = self._metric_group

    def validation_step(self, video: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        name = self.val_datasets[dataloader_idx]
        task: Task = self.tasks[self.dataset_tasks[name]]
        gt = self.val_records[name].videos[video.index]
        pred = task.predict_video(self.model, video, gt, name)
        self.metrics[name].update(pred, gt)
        if (batch_idx < self.media_videos and self._trainer is not None and self.trainer.is_global_zero
                and self.trainer.loggers):
            self._log_media(self.dataset_tasks[name], name, video, pred)

    def _log_media(self, task_name: str, dataset: str, video: Any, pred: Any) -> None:
        """Overlay of one validation video for the loggers (`val_media/<task>/<dataset>/<video>`); the PNG/GIF
        files go to <trainer root dir>/media (the run dir with the project's trainer config)."""
        from pathlib import Path

        from vidseg.utils.media import log_overlays, overlay_video

        overlay = overlay_video(video.frames, video.valid_hw, pred, max_frames=self.media_max_frames)
        media_dir = Path(self.trainer.default_root_dir) / "media"
        log_overlays(self.loggers, f"val_media/{task_name}/{dataset}/{pred.video_id}", overlay, self.global_step,
                     media_dir)

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


def seed_step_rngs(seed: int, rank: int, micro_batch: int) -> int:
    """Seed torch, numpy and python's global RNGs from (seed, rank, micro-batch); returns the derived seed.
    Whatever a training step draws (dropout, random pixels, grid cells) then depends only on the step."""
    derived = int(np.random.SeedSequence([int(seed), int(rank), int(micro_batch)]).generate_state(1)[0])
    torch.manual_seed(derived)
    np.random.seed(derived)
    random.seed(derived)
    return derived


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
