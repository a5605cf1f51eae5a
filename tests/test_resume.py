"""Exact resume: a `task=multi` run killed with SIGKILL mid-training and resumed with `ckpt_path=last` ends with
parameters (and optimizer state) identical to an uninterrupted run; a kill during a checkpoint save leaves the
previous checkpoint loadable."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from vidseg.utils.audit import read_audit
from vidseg.utils.checkpoint import AtomicModelCheckpoint
from vidseg.utils.launch import QUICK, checkpoint_state, run_train, start_train

# 3 optimizer steps per epoch, so the resumed part crosses an epoch boundary; chunk=1 so the task changes
# between steps (VOS point/mask splits, several heads); accumulation 2 so micro-batches != steps; 2 loader
# workers prefetch ahead of training, so the position must come from the trainer, not from the sampler.
COMMON = [
    *QUICK, "task=multi", "data.chunk=1", "data.steps_per_epoch=3", "trainer.max_steps=6",
    "trainer.accumulate_grad_batches=2", "checkpoint.every_n_steps=2", "deterministic=true", "validate=false",
    "trainer.limit_val_batches=0", "data.num_workers=2",
]


def _audit(path: Path) -> list[str]:
    return ["+callbacks.audit._target_=vidseg.utils.audit.SamplerAudit", f"+callbacks.audit.dirpath={path}"]


@pytest.mark.slow
def test_sigkill_and_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    full, part = tmp_path / "full", tmp_path / "part"
    run_train([*COMMON, f"hydra.run.dir={full}"], timeout=900)

    proc = start_train([*COMMON, f"hydra.run.dir={part}", *_audit(part / "audit1")], log=tmp_path / "part1.log")
    last = part / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 600
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be killed:\n" + (tmp_path / "part1.log").read_text()
    os.kill(proc.pid, signal.SIGKILL)  # mid step 3 (last.ckpt appears after step 2's save completed)
    proc.wait()
    saved_step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert saved_step == 2
    killed = read_audit(part / "audit1")[0]
    assert len(killed) >= 4  # micro-batches 0..3 trained before the kill

    run_train([*COMMON, f"hydra.run.dir={part}", "ckpt_path=last", *_audit(part / "audit2")], timeout=900)
    resumed = read_audit(part / "audit2")[0]
    assert [r["micro"] for r in resumed] == list(range(4, 12))  # continued at step 2's end, not from scratch
    # the replayed micro-batches (killed run) saw the same data as the resumed run
    for r in killed[4:]:
        match = resumed[r["micro"] - 4]
        assert (match["dataset"], match["indices"], match["videos"]) == (r["dataset"], r["indices"], r["videos"])

    a = torch.load(full / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(last, map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 6
    sa, sb = checkpoint_state(full / "checkpoints" / "last.ckpt"), checkpoint_state(last)
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, different
    for ga, gb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values(),
                      strict=True):
        assert all(torch.equal(ga[k], gb[k]) for k in ga)
    assert a["lr_schedulers"] == b["lr_schedulers"]
    assert a["VidsegDataModule"] == b["VidsegDataModule"] == {"micro_batch": 12, "epoch": 1}


# ---------------------------------------------------------------------------------------------- kill during save
class _Trainer:
    """What ModelCheckpoint._save_checkpoint uses of a trainer; `save_checkpoint` writes `payload`, and with
    `die_after` bytes written it SIGKILLs its own process in the middle of the write."""

    is_global_zero = True
    loggers: list = []

    def __init__(self, payload: dict, step: int, die_after: int | None = None) -> None:
        self.payload, self.global_step, self.die_after = payload, step, die_after

    def save_checkpoint(self, filepath: str, weights_only: bool = False) -> None:
        import io

        buf = io.BytesIO()
        torch.save(self.payload, buf)
        data = buf.getvalue()
        with open(filepath, "wb") as f:
            if self.die_after is None:
                f.write(data)
                return
            f.write(data[: self.die_after])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)


def _save_then_die(cls_name: str, dirpath: str) -> None:
    cls = {"atomic": AtomicModelCheckpoint, "plain": ModelCheckpoint}[cls_name]
    cb = cls(dirpath=dirpath, save_last=True)
    target = os.path.join(dirpath, "last.ckpt")
    cb._save_checkpoint(_Trainer({"step": 1, "w": torch.arange(50000.0)}, 1), target)
    cb._save_checkpoint(_Trainer({"step": 2, "w": torch.zeros(50000)}, 2, die_after=100_000), target)


def _kill_during_second_save(kind: str, tmp_path: Path) -> Any:
    proc = mp.get_context("fork").Process(target=_save_then_die, args=(kind, str(tmp_path)))
    proc.start()
    proc.join(120)
    assert proc.exitcode == -signal.SIGKILL
    return tmp_path / "last.ckpt"


def test_kill_during_save_leaves_the_previous_checkpoint_loadable(tmp_path: Path) -> None:
    last = _kill_during_second_save("atomic", tmp_path)
    state = torch.load(last, weights_only=True)
    assert state["step"] == 1 and torch.equal(state["w"], torch.arange(50000.0))
    leftovers = list(tmp_path.glob(".last.ckpt.tmp-*"))
    assert len(leftovers) == 1  # the interrupted write went to the temp file only
    # the next fit's setup removes it
    cb = AtomicModelCheckpoint(dirpath=str(tmp_path))

    class _Strategy:
        @staticmethod
        def broadcast(x: Any) -> Any:
            return x

    class _SetupTrainer:
        is_global_zero, strategy, fast_dev_run, loggers = True, _Strategy(), False, []
        default_root_dir = str(tmp_path)

    cb.setup(_SetupTrainer(), None, "fit")  # type: ignore[arg-type]
    assert not list(tmp_path.glob(".last.ckpt.tmp-*"))
    assert torch.load(last, weights_only=True)["step"] == 1


def test_plain_checkpointing_is_corrupted_by_the_same_kill(tmp_path: Path) -> None:
    """Control: without temp + rename the same kill leaves a truncated last.ckpt (the test above can fail)."""
    last = _kill_during_second_save("plain", tmp_path)
    with pytest.raises(Exception):  # noqa: B017 - torch raises RuntimeError or pickle errors on truncation
        torch.load(last, weights_only=True)
