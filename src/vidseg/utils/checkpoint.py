"""Atomic checkpoints: write to a temp file in the same folder, then rename over the target.

A kill during a save leaves the previous checkpoint intact (rename is atomic on POSIX file systems)."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint


class AtomicModelCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose every write (including `last.ckpt`) is temp file + os.replace."""

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        path = Path(filepath)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        trainer.save_checkpoint(str(tmp), self.save_weights_only)
        if trainer.is_global_zero:
            os.replace(tmp, path)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)
