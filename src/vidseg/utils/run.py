"""Building a run from config (shared by train / evaluate / predict entry points)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from vidseg.data.datamodule import VidsegDataModule
from vidseg.module import VidsegModule
from vidseg.tasks.base import build_tasks

log = logging.getLogger(__name__)


@dataclass
class Run:
    trainer: pl.Trainer
    module: VidsegModule
    datamodule: VidsegDataModule


def write_json_atomic(path: Path, obj: Any) -> Path:
    """JSON through temp file + rename (a crash never leaves a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
    return path


def build_datamodule(cfg: DictConfig, task_names: list[str]) -> VidsegDataModule:
    data = OmegaConf.to_container(cfg.data, resolve=True)
    assert isinstance(data, dict)
    datasets = data.pop("datasets")
    data.pop("root", None)
    data.pop("global_batch", None)
    return VidsegDataModule(
        datasets, tasks=task_names, cache_dir=cfg.paths.cache_dir, seed=int(cfg.seed),
        accumulate=int(cfg.trainer.get("accumulate_grad_batches", 1) or 1), **data,
    )


def build_module(cfg: DictConfig, datamodule: VidsegDataModule) -> VidsegModule:
    """Model + tasks (their dataset-dependent parameters created from the datamodule's vocabularies)."""
    model = instantiate(cfg.model)
    tasks = build_tasks(cfg.tasks)
    vocab = datamodule.vocabularies()
    for name, task in tasks.items():
        task.setup(model, {d: cats for d, cats in vocab.items() if datamodule.task_of(d) == name})
    dataset_tasks = {d: datamodule.task_of(d) for d in datamodule.specs}
    media = cfg.get("media") or {}
    module = VidsegModule(
        model, tasks, cfg.optim, dataset_tasks=dataset_tasks, seed=int(cfg.seed),
        max_nonfinite_skips=cfg.get("max_nonfinite_skips"), media_videos=int(media.get("videos_per_dataset", 0)),
        media_max_frames=int(media.get("max_frames", 16)),
    )
    module.attach_val({n: datamodule.val_records[n] for n in datamodule.val_names()})
    module.run_config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False) if _resolvable(cfg) else None
    return module


def _resolvable(cfg: DictConfig) -> bool:
    """True when every interpolation of `cfg` resolves (outside a Hydra run `${hydra:...}` may not)."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
        return True
    except Exception:  # omegaconf raises several error types for unresolved interpolations
        return False


def accumulation_for(global_batch: int | None, batch_size: int, world_size: int, configured: int = 1) -> int:
    """Micro-batches per optimizer step so that one step sees `global_batch` clips whatever the number of
    devices (global_batch = batch_size × world_size × accumulation); `configured` when global_batch is None."""
    if global_batch in (None, 0):
        return max(1, int(configured))
    per_micro = batch_size * world_size
    if global_batch % per_micro:
        raise ValueError(
            f"data.global_batch={global_batch} is not a multiple of data.batch_size × devices = {batch_size} × "
            f"{world_size}; choose a global batch divisible by {per_micro}"
        )
    return global_batch // per_micro


def set_torch_threads(threads: int | None) -> None:
    """Intra-op CPU threads of this process (`torch_threads` in train.yaml; None keeps torch's default)."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"torch_threads must be a positive number of threads or null, got {threads!r}")
    torch.set_num_threads(threads)


def build_run(cfg: DictConfig) -> Run:
    set_torch_threads(cfg.get("torch_threads"))
    pl.seed_everything(int(cfg.seed), workers=True)
    if cfg.get("deterministic"):
        # cuBLAS needs this before the first GEMM for deterministic results on GPUs
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    datamodule = build_datamodule(cfg, list(cfg.tasks))
    datamodule.prepare_data()
    module = build_module(cfg, datamodule)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    accumulate = accumulation_for(cfg.data.get("global_batch"), int(cfg.data.batch_size), trainer.world_size,
                                  int(cfg.trainer.get("accumulate_grad_batches", 1) or 1))
    trainer.accumulate_grad_batches = accumulate
    datamodule.accumulate = accumulate
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    resolved["derived"] = {"accumulate_grad_batches": accumulate, "world_size": trainer.world_size,
                           "global_batch": int(cfg.data.batch_size) * trainer.world_size * accumulate}
    for lg in loggers:
        if hasattr(lg, "log_hyperparams"):
            lg.log_hyperparams(resolved)
    log.info("world size %d, batch %d per device, %d micro-batches per step: %d clips per optimizer step",
             trainer.world_size, int(cfg.data.batch_size), accumulate, resolved["derived"]["global_batch"])
    return Run(trainer, module, datamodule)


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """`ckpt_path=last` -> <run dir>/checkpoints/last.ckpt if it exists (else start fresh)."""
    ckpt = cfg.get("ckpt_path")
    if ckpt in (None, ""):
        return None
    if ckpt == "last":
        last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        if last.is_file():
            return str(last)
        log.warning("ckpt_path=last but %s does not exist: starting from scratch", last)
        return None
    if not Path(ckpt).is_file():
        raise FileNotFoundError(f"ckpt_path: checkpoint {ckpt} does not exist")
    return str(ckpt)


def close_loggers(trainer: pl.Trainer | None, status: str = "success") -> None:
    """Finalize every logger and finish the W&B run, so Hydra multirun jobs (same process, one after the
    other) get separate runs and nothing is left unflushed."""
    for logger in trainer.loggers if trainer is not None else []:
        try:
            logger.finalize(status)
        except Exception as err:  # a failing logger must not hide the run's own outcome
            log.warning("closing logger %s failed: %s", type(logger).__name__, err)
    try:
        import wandb
    except ImportError:  # pragma: no cover - wandb is a dependency
        return
    if wandb.run is not None:
        wandb.finish(exit_code=0 if status == "success" else 1)


@rank_zero_only
def print_config(cfg: DictConfig) -> None:
    """Rich tree of the resolved config (lightning-hydra-template `extras`)."""
    from rich.console import Console
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config")
    for key in cfg:
        node = cfg[key]
        text = OmegaConf.to_yaml(node, resolve=False) if isinstance(node, DictConfig) else str(node)
        tree.add(str(key)).add(Syntax(text, "yaml"))
    Console(stderr=True).print(tree)
