"""A diagnostic callback that records what each rank trains on, to check the multi-task sampler under DDP.

Per micro-batch and rank, one JSON line in `<dir>/audit_rank<r>.jsonl`:
- `groups`: the dataset index of the batch on every rank (an all_gather: all ranks must agree),
- `dataset`, `videos`: what the batch actually holds; `indices`: the sampler's indices for this micro-batch,
- `sync`: whether DDP all-reduces gradients in this backward (False on non-final accumulation micro-steps),
- `grad_sums`: every rank's sum of all gradients after the backward (all_gather: they differ across ranks
  before the all-reduce and agree after it), `grads_missing`: trainable parameters without a gradient,
- `param_sums`: every rank's sum of all parameters before the micro-batch (DDP keeps them identical);
a last line `{"event": "end", "param_sums": [...]}` holds the parameters after training.
Enable with `+callbacks.audit._target_=vidseg.utils.audit.SamplerAudit +callbacks.audit.dirpath=DIR`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


class SamplerAudit(Callback):
    """Writes one JSON line per micro-batch and rank (see the module docstring)."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self._record: dict[str, Any] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        dm = trainer.datamodule
        names = list(dm.specs)
        micro = int(trainer.fit_loop.epoch_loop.total_batch_idx)
        group = torch.tensor([names.index(batch.dataset)], device=pl_module.device)
        gathered = pl_module.all_gather(group).reshape(-1).tolist()
        self._record = {
            "param_sums": _gathered_param_sums(pl_module),
            "rank": trainer.global_rank, "micro": micro, "step": trainer.global_step, "batch_idx": batch_idx,
            "epoch": trainer.current_epoch, "dataset": batch.dataset, "groups": gathered,
            "sampler_group": dm.batch_sampler.group_of_micro(micro), "indices": dm.batch_sampler.indices_of(micro),
            "videos": [s.video_id for s in batch.samples],
        }

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = [p for p in pl_module.parameters() if p.requires_grad]
        missing = sum(p.grad is None for p in params)
        total = sum(float(p.grad.double().sum()) for p in params if p.grad is not None)
        gathered = pl_module.all_gather(torch.tensor([total], dtype=torch.float64, device=pl_module.device))
        ddp = getattr(trainer.strategy, "model", None)
        self._record.update(
            sync=bool(getattr(ddp, "require_backward_grad_sync", True)), grads_missing=int(missing),
            grad_sums=gathered.reshape(-1).tolist(),
        )

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        with open(self.dirpath / f"audit_rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(self._record) + "\n")
        self._record = {}


    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sums = _gathered_param_sums(pl_module)
        self.dirpath.mkdir(parents=True, exist_ok=True)
        with open(self.dirpath / f"audit_rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps({"event": "end", "rank": trainer.global_rank, "param_sums": sums}) + "\n")


def _gathered_param_sums(pl_module: pl.LightningModule) -> list[float]:
    total = sum(float(p.detach().double().sum()) for p in pl_module.parameters())
    gathered = pl_module.all_gather(torch.tensor([total], dtype=torch.float64, device=pl_module.device))
    return gathered.reshape(-1).tolist()


def read_audit(dirpath: str | Path) -> dict[int, list[dict[str, Any]]]:
    """{rank: [record per micro-batch, in order]} from the audit files of a run (end-of-training lines left
    out: see `read_audit_end`)."""
    return {rank: [r for r in rows if "event" not in r] for rank, rows in _read_rows(dirpath).items()}


def read_audit_end(dirpath: str | Path) -> dict[int, list[dict[str, Any]]]:
    """{rank: [end-of-training record of every fit, in order]}."""
    return {rank: [r for r in rows if r.get("event") == "end"] for rank, rows in _read_rows(dirpath).items()}


def _read_rows(dirpath: str | Path) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for path in sorted(Path(dirpath).glob("audit_rank*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out[int(path.stem.removeprefix("audit_rank"))] = rows
    return out
