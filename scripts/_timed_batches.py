"""Shared by the scratch training probes in scripts/: the task's training data composed from conf/train.yaml,
training batches for a fixed wall-clock budget, and the reference models' command line and report."""

from __future__ import annotations

import argparse
import json
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
    passed since the first call; finished as on the device (`Batch.to`: crops resized, mask rectangles painted)."""
    start = time.time()
    loader = iter(datamodule.train_dataloader())
    while time.time() - start < seconds:
        batch = next(loader, None)
        if batch is None:
            loader = iter(datamodule.train_dataloader())
            continue
        yield batch.to("cpu")


def reference_args(doc: str | None, json_help: str) -> argparse.Namespace:
    """Command line of the reference-model scripts: --seconds, --mask-stride, -x/--override, --json."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--mask-stride", type=int, choices=(2, 4), default=4)
    parser.add_argument("-x", "--override", action="append", default=[], help="Hydra override of the train config")
    parser.add_argument("--json", default=None, help=json_help)
    return parser.parse_args()


def report(result: dict[str, Any], json_path: str | None) -> None:
    """Print `result` as one JSON line and, with a path, also write it there."""
    print(json.dumps(result))
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
