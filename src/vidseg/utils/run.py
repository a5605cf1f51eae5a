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
from hydra.utils import instantiate
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
    module = VidsegModule(model, tasks, cfg.optim, dataset_tasks=dataset_tasks)
    module.attach_val({n: datamodule.val_records[n] for n in datamodule.val_names()})
    return module


def build_run(cfg: DictConfig) -> Run:
    pl.seed_everything(int(cfg.seed), workers=True)
    datamodule = build_datamodule(cfg, list(cfg.tasks))
    datamodule.prepare_data()
    module = build_module(cfg, datamodule)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        if hasattr(lg, "log_hyperparams"):
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
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


def close_loggers(trainer: pl.Trainer) -> None:
    """Finish W&B runs so that Hydra multirun jobs do not merge into one run."""
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except ImportError:  # pragma: no cover - wandb is a dependency
        pass


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
