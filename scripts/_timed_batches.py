"""Shared by the scratch training probes in scripts/: the task's training data composed from conf/train.yaml, and
training batches for a fixed wall-clock budget."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir

CONF = Path(__file__).resolve().parents[1] / "conf"


def probe_data(task: str, overrides: Sequence[str] = ()) -> tuple[Any, Any]:
    """(config, datamodule set up for fitting) of `python -m vidseg.train task=<task>` + overrides, after seeding
    torch with 0 and limiting it to one thread (as the recipe runs)."""
    from vidseg.utils.run import build_datamodule

    torch.manual_seed(0)
    torch.set_num_threads(1)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"task={task}", "paths.output_dir=/tmp", *overrides])
    dm = build_datamodule(cfg, [task])
    dm.prepare_data()
    dm.setup("fit")
    return cfg, dm


def batches_for(datamodule: Any, seconds: float) -> Iterator[Any]:
    """Training batches of `datamodule`, restarting its loader at the end of an epoch, until `seconds` have
    passed since the first call."""
    start = time.time()
    loader = iter(datamodule.train_dataloader())
    while time.time() - start < seconds:
        batch = next(loader, None)
        if batch is None:
            loader = iter(datamodule.train_dataloader())
            continue
        yield batch
