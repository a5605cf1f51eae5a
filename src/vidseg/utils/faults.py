"""Fault injection for robustness checks: make chosen micro-batches' losses non-finite (optionally on one rank
only) to exercise the module's skip-and-count path, e.g. under DDP:

    +callbacks.fault._target_=vidseg.utils.faults.InjectNonFinite "+callbacks.fault.micro_batches=[3]"
    +callbacks.fault.rank=1
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


class InjectNonFinite(Callback):
    """Multiplies every loss term by NaN on the listed global micro-batches (on `rank` only, or all ranks)."""

    def __init__(self, micro_batches: Sequence[int], rank: int | None = None) -> None:
        self.micro_batches = {int(m) for m in micro_batches}
        self.rank = rank
        self._armed = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        forward = pl_module.forward_task

        def poisoned(batch: Any) -> tuple[dict[str, torch.Tensor], Any]:
            losses, out = forward(batch)
            if self._armed:
                losses = {k: v * float("nan") for k, v in losses.items()}
            return losses, out

        pl_module.forward_task = poisoned  # instance attribute: the module's training_step calls it

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        micro = int(trainer.fit_loop.epoch_loop.total_batch_idx)
        self._armed = micro in self.micro_batches and self.rank in (None, trainer.global_rank)
