"""Shared by the scratch training probes in scripts/: training batches for a fixed wall-clock budget."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any


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
