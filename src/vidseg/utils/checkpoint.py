"""Atomic checkpoints: write to a temp file in the same folder, fsync, then rename over the target.

A kill during a save leaves the previous checkpoint intact (rename is atomic on POSIX file systems); the
half-written temp file is removed at the next fit's setup."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)

TMP_MARK = ".tmp-"


def temp_path_for(path: Path) -> Path:
    """Hidden temp name next to `path`, unique per process."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicModelCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose every write (including `last.ckpt`) is temp file + fsync + os.replace."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath and Path(self.dirpath).is_dir():
            for stale in Path(self.dirpath).glob(f".*{TMP_MARK}*"):
                log.warning("removing %s, left by a save that was interrupted", stale)
                stale.unlink(missing_ok=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Training stopped (e.g. max_steps between two save points): `last.ckpt` must hold the final weights,
        which evaluate, predict and `ckpt_path=last` read."""
        super().on_train_end(trainer, pl_module)
        if self.save_last and trainer.global_step != self._last_global_step_saved and not trainer.sanity_checking:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        path = Path(filepath)
        tmp = temp_path_for(path)
        trainer.save_checkpoint(str(tmp), self.save_weights_only)  # rank 0 writes; all ranks take part
        if trainer.is_global_zero:
            _fsync(tmp)
            os.replace(tmp, path)
            _fsync(path.parent)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)
