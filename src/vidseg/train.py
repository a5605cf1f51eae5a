"""`python -m vidseg.train task=vis` — train the shared model on one task (or `task=multi`), validate with
the official metric, write `metrics.json` into the run dir. Thin entry point: everything is built from config."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from vidseg.utils.run import build_run, close_loggers, resolve_ckpt_path, write_json_atomic

log = logging.getLogger(__name__)


# The datamodule restores the sampler position from the checkpoint itself (VidsegDataModule.state_dict), so
# Lightning's generic warning about mid-epoch checkpoints of non-resumable loaders does not apply.
warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
# A non-finite loss makes training_step return None on purpose; the module logs its own warning and count.
warnings.filterwarnings("ignore", message=".*`training_step` returned `None`.*")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Build data, model, tasks and trainer from `cfg`; fit; validate; write `metrics.json` (rank 0);
    return the final metrics. Loggers are closed whatever happens (multirun jobs get separate W&B runs)."""
    run = build_run(cfg)
    trainer, module, datamodule = run.trainer, run.module, run.datamodule
    ckpt = resolve_ckpt_path(cfg)
    status = "failed"
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
        metrics: dict[str, Any] = {}
        if cfg.get("validate", True) and datamodule.val_names():
            trainer.validate(module, datamodule=datamodule, verbose=False)
            metrics = module.final_metrics
        if trainer.is_global_zero:
            write_json_atomic(Path(cfg.paths.output_dir) / "metrics.json", metrics)
            log.info("final metrics: %s", json.dumps(metrics))
        status = "success"
        return metrics
    finally:
        close_loggers(trainer, status)


def ddp_children_run_this_job() -> None:
    """Lightning's DDP launcher starts ranks > 0 by re-running `sys.argv` with `hydra.run.dir=<run.dir>`.
    Inside a multirun job that would start the whole sweep again in every child, in the wrong folder; make the
    children run this job's overrides only, in this job's output dir."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return
    sys.argv = [sys.argv[0], *hc.overrides.task]
    with read_write(hc), open_dict(hc):
        hc.run.dir = hc.runtime.output_dir


@hydra.main(version_base="1.3", config_path="../../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ddp_children_run_this_job()
    if cfg.get("print_config", True):
        from vidseg.utils.run import print_config

        print_config(cfg)  # rank 0 only
    metrics = train(cfg)
    key = cfg.get("optimized_metric")
    if key:
        return float(OmegaConf.select(OmegaConf.create(metrics), key))
    return None


if __name__ == "__main__":
    main()
