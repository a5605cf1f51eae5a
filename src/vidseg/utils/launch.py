"""Running `python -m vidseg.train` as a subprocess and reading what a run leaves behind (metrics.json,
checkpoints). Used by scripts (joint vs single-task training) and by the end-to-end tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

# A tiny, quick CPU configuration: batch 1, CSV logging, no config print. (`trainer.limit_val_batches=0` would
# also turn off the final validation: limit in-training validation with data.steps_per_epoch instead.)
QUICK = ("data.batch_size=1", "trainer.accelerator=cpu", "logger=csv", "print_config=false",
         "trainer.log_every_n_steps=1")


def default_cache() -> Path:
    """Synthetic-data cache for subprocess runs: $VIDSEG_CACHE, else a per-user folder in the temp dir."""
    env = os.environ.get("VIDSEG_CACHE")
    return Path(env) if env else Path(tempfile.gettempdir()) / f"vidseg-cache-{os.getuid()}"


def train_command(overrides: Sequence[str], multirun: bool = False) -> list[str]:
    """argv of `python -m vidseg.train [-m] overrides...` with this interpreter."""
    return [sys.executable, "-m", "vidseg.train", *(["-m"] if multirun else []), *overrides]


def train_env(cache: Path | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a training subprocess: offline hub, the synthetic cache, one BLAS thread per process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VIDSEG_CACHE": str(cache or default_cache()),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.update(extra or {})
    return env


def start_train(overrides: Sequence[str], *, multirun: bool = False, cache: Path | None = None,
                env: Mapping[str, str] | None = None, log: Path | None = None) -> subprocess.Popen:
    """Start a training subprocess (stdout+stderr to `log`, else discarded) and return it."""
    out = open(log, "w") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - closed by the caller's wait
    return subprocess.Popen(train_command(overrides, multirun), env=train_env(cache, env), stdout=out,
                            stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[3])


def run_train(overrides: Sequence[str], *, multirun: bool = False, cache: Path | None = None,
              env: Mapping[str, str] | None = None, timeout: float = 1800, log: Path | None = None) -> None:
    """Run a training subprocess to completion; raise RuntimeError with the log's tail if it fails."""
    log = log or Path(tempfile.mkstemp(prefix="vidseg-train-", suffix=".log")[1])
    proc = start_train(overrides, multirun=multirun, cache=cache, env=env, log=log)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"training timed out after {timeout} s: {' '.join(overrides)}\n{_tail(log)}") from None
    if code != 0:
        raise RuntimeError(f"training failed (exit {code}): {' '.join(overrides)}\n{_tail(log)}")


def _tail(path: Path, chars: int = 6000) -> str:
    text = path.read_text(errors="replace") if path.is_file() else ""
    return text[-chars:]


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """The run's final validation metrics ({task: {metric: value}, "task/dataset": {...}})."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the run wrote no metrics.json (did it finish?)")
    return json.loads(path.read_text())


def checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    """Model + task parameters/buffers of a checkpoint (weights_only load)."""
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
