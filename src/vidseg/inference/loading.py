"""Loading a trained checkpoint for inference: the run's config, the model + tasks built exactly as training
built them (`vidseg.utils.run.build_module`), weights loaded with `weights_only=True` and checked strictly.

The config comes from the checkpoint when it carries one (`vidseg_config`, or Lightning's
`hyper_parameters["cfg"]`), else from the Hydra run folder the checkpoint lives in
(`<run>/checkpoints/x.ckpt` -> `<run>/.hydra/config.yaml`), else from an explicit `config=` path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from vidseg.data.records import AnnotationFormatError, CorruptMediaError, MissingFileError

log = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model/tasks its config builds, or lacks the requested task/vocabulary."""


@dataclass
class LoadedRun:
    """A model + tasks ready for inference, and the training config they were built from."""

    module: Any  # VidsegModule (model + tasks), eval mode
    cfg: DictConfig
    datamodule: Any  # the training datamodule (vocabularies, eval sizes)
    ckpt_path: Path

    @property
    def model(self) -> Any:
        return self.module.model

    def task(self, name: str | None) -> Any:
        """The task `name` (None: the checkpoint's only task); a clear error when the checkpoint lacks it."""
        names = list(self.module.tasks)
        if name is None:
            if len(names) != 1:
                raise CheckpointMismatchError(f"{self.ckpt_path}: trained tasks {names}; choose one with task=...")
            name = names[0]
        if name not in self.module.tasks:
            raise CheckpointMismatchError(
                f"{self.ckpt_path}: checkpoint has no queries/parameters for task {name!r} (trained tasks: {names})"
            )
        return self.module.tasks[name]

    def datasets_of(self, task: str) -> list[str]:
        """Training datasets (vocabulary keys) of `task`, in config order."""
        return [d for d in self.datamodule.specs if self.datamodule.task_of(d) == task]

    def eval_size(self, dataset: str) -> tuple[int, int]:
        """(short, max_dim) of the dataset's `eval` block (the validation resize)."""
        ev = self.datamodule.specs[dataset].get("eval") or {}
        return int(ev.get("short", 96)), int(ev.get("max_dim", 1333))


def read_checkpoint(path: Path | str) -> dict[str, Any]:
    """torch.load(weights_only=True) with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: checkpoint file does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors of every kind: report the file, keep the cause
        raise CorruptMediaError(f"{path}: cannot load checkpoint with weights_only=True ({e})") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointMismatchError(f"{path}: not a vidseg/Lightning checkpoint (no 'state_dict')")
    return ckpt


def checkpoint_config(ckpt: dict[str, Any], ckpt_path: Path, config: Path | str | None = None) -> DictConfig:
    """The training config of a checkpoint (see module doc for where it is looked up)."""
    if config is not None:
        if not Path(config).is_file():
            raise MissingFileError(f"{config}: config file does not exist")
        return OmegaConf.load(config)  # type: ignore[return-value]
    if isinstance(ckpt.get("vidseg_config"), dict):
        return OmegaConf.create(ckpt["vidseg_config"])
    hp = ckpt.get("hyper_parameters")
    if isinstance(hp, dict) and isinstance(hp.get("cfg"), dict):
        return OmegaConf.create(hp["cfg"])
    tried = [ckpt_path.parent.parent / ".hydra" / "config.yaml", ckpt_path.parent / ".hydra" / "config.yaml"]
    for cand in tried:
        if cand.is_file():
            return OmegaConf.load(cand)  # type: ignore[return-value]
    raise MissingFileError(
        f"{ckpt_path}: the checkpoint holds no config and none was found at {[str(c) for c in tried]}; "
        "pass config=<run dir>/.hydra/config.yaml"
    )


def load_run(
    ckpt_path: Path | str, paths: Any = None, config: Path | str | None = None, device: str = "cpu"
) -> LoadedRun:
    """Build the checkpoint's model + tasks from its config and load the weights strictly.

    paths: the current run's `paths` node (cache dir, output dir); replaces the training run's."""
    from vidseg.utils.run import build_datamodule, build_module

    ckpt_path = Path(ckpt_path)
    ckpt = read_checkpoint(ckpt_path)
    cfg = checkpoint_config(ckpt, ckpt_path, config)
    for key in ("model", "tasks", "data"):
        if key not in cfg:
            raise CheckpointMismatchError(f"{ckpt_path}: its config has no '{key}' section (not a vidseg run?)")
    if paths is not None:
        cfg.paths = paths
    cfg.run_name = "inference"  # the training value interpolates Hydra's runtime choices
    datamodule = build_datamodule(cfg, list(cfg.tasks))
    module = build_module(cfg, datamodule)
    state = ckpt["state_dict"]
    missing, unexpected, shapes = _compare(module.state_dict(), state)
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(
            f"{ckpt_path}: weights do not fit the model/tasks of its config (another model or config?): "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}, shape mismatches {shapes[:5]}"
        )
    module.load_state_dict(state, strict=True)
    module.eval().to(device)
    return LoadedRun(module, cfg, datamodule, ckpt_path)


def _compare(expected: dict[str, torch.Tensor], got: dict[str, Any]) -> tuple[list, list, list]:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [f"{k}: {tuple(got[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in got and tuple(got[k].shape) != tuple(v.shape)]
    return missing, unexpected, shapes


def check_vocabulary(task: Any, dataset: str, categories: list | None = None) -> None:
    """The task must know `dataset`'s vocabulary (semantic queries are keyed by dataset name)."""
    if getattr(task, "name", "") in ("vos", "pet"):
        return
    known = sorted(task.vocabularies)
    if dataset not in task.vocabularies:
        raise CheckpointMismatchError(
            f"task {task.name!r} has no semantic queries for dataset {dataset!r}; trained vocabularies: {known}"
        )
    if categories is not None and [c.id for c in categories] != [c.id for c in task.vocabularies[dataset]]:
        raise AnnotationFormatError(
            f"dataset {dataset!r}: its categories differ from the vocabulary the checkpoint was trained on"
        )
