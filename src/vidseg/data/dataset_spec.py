"""Validation of the dataset specs `data.datasets.<name>` (conf/data/*.yaml): every key is one the data pipeline
reads, `format` is given and known, `task` is known (default: the run's task when it trains one task), and the
`options`, `eval` and `synthetic` blocks only hold what their consumers accept. Errors name the option and suggest
the closest valid key."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from vidseg.data.formats import FORMATS, get_format

log = logging.getLogger(__name__)

# Every key of a dataset spec and what reads it (tests/data/test_datamodule.py checks this against the code).
SPEC_KEYS: dict[str, str] = {
    "task": "the task trained on it (VidsegDataModule.task_of); default: the run's task if it has exactly one",
    "format": "official layout, vidseg.data.formats.<format> (required)",
    "root": "dataset folder; null: the built-in synthetic data (VidsegDataModule.dataset_root)",
    "synthetic": "vidseg.data.synthetic.SyntheticParams of the built-in data (root: null)",
    "train_split": "split read for training (default: train)",
    "val_split": "split validated on; null: no validation",
    "options": "keyword options of the format's read(root, split, **options)",
    "weight": "sampling weight in the multi-task batch sampler (default 1.0)",
    "with_semantic": "clips carry semantic masks",
    "sampler": "clip sampler config (instantiated; required for training)",
    "train_transform": "training transform config (instantiated; required for training)",
    "eval": "validation resize and cap: short, max_dim, max_videos",
}
EVAL_KEYS: tuple[str, ...] = ("short", "max_dim", "max_videos")


def unknown_key_error(path: str, key: Any, valid: Iterable[str], what: str = "key") -> ValueError:
    """`path.key: unknown <what>`, with the closest valid key and the list of valid ones."""
    valid = list(valid)
    close = difflib.get_close_matches(str(key), valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ValueError(f"{path}.{key}: unknown {what}{hint} (valid: {', '.join(valid) or 'none'})")


def check_keys(path: str, block: Any, valid: Iterable[str], what: str = "key") -> None:
    """Raise `unknown_key_error` for the first key of the mapping `block` not in `valid`."""
    if not isinstance(block, Mapping):
        raise ValueError(f"{path} must be a mapping, got {block!r}")
    valid = list(valid)
    for key in block:
        if key not in valid:
            raise unknown_key_error(path, key, valid, what)


def reader_options(fmt: str) -> list[str]:
    """Options format `fmt`'s `read(root, split, ...)` accepts: its named parameters after root and split (a
    reader's `**options` only rejects the rest)."""
    params = list(inspect.signature(get_format(fmt).read).parameters.values())[2:]
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _unknown_value(path: str, value: Any, valid: Iterable[str], what: str) -> ValueError:
    valid = list(valid)
    close = difflib.get_close_matches(str(value), valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ValueError(f"{path}: unknown {what} {value!r}{hint} (known: {', '.join(valid)})")


def validate_spec(name: str, spec: Any, default_task: str | None = None) -> Mapping[str, Any]:
    """Check the spec `data.datasets.<name>` (a dict or DictConfig); returns it, with `task` set to
    `default_task` where the spec has none. Raises ValueError naming the offending option."""
    from vidseg.data.clip_dataset import TASKS

    path = f"data.datasets.{name}"
    check_keys(path, spec, SPEC_KEYS, "dataset option")
    fmt = spec.get("format")
    if fmt is None:
        raise ValueError(f"{path}.format is missing: the dataset's layout, one of {', '.join(FORMATS)}")
    if fmt not in FORMATS:
        raise _unknown_value(f"{path}.format", fmt, FORMATS, "dataset format")
    task = spec.get("task")
    if task is None:
        if default_task is None:
            raise ValueError(f"{path}.task is missing: set one of {', '.join(TASKS)} (it defaults to the run's "
                             "task only when the run trains a single task)")
        spec = {**spec, "task": default_task}
    elif task not in TASKS:
        raise _unknown_value(f"{path}.task", task, TASKS, "task")
    options = spec.get("options")
    if options is not None:
        check_keys(f"{path}.options", options, reader_options(fmt), f"option of format {fmt!r}")
    if spec.get("eval") is not None:
        check_keys(f"{path}.eval", spec["eval"], EVAL_KEYS, "eval option")
    if spec.get("synthetic") is not None:
        from vidseg.data.synthetic import SyntheticParams

        fields = [f.name for f in dataclasses.fields(SyntheticParams)]
        check_keys(f"{path}.synthetic", spec["synthetic"], fields, "synthetic data parameter")
        if spec.get("root"):
            log.warning("%s.synthetic is unused: root is set (%s), so the dataset is read from there", path,
                        spec["root"])
    return spec


def validate_specs(datasets: Any, tasks: list[str] | None = None) -> dict[str, Mapping[str, Any]]:
    """`validate_spec` over every entry of `data.datasets`; `tasks`: the run's tasks (one: the default task)."""
    if not isinstance(datasets, Mapping):
        raise ValueError(f"data.datasets must be a mapping of dataset name to spec, got {datasets!r}")
    default_task = tasks[0] if tasks is not None and len(tasks) == 1 else None
    return {str(k): validate_spec(str(k), v, default_task) for k, v in datasets.items()}


def require(name: str, spec: Mapping[str, Any], key: str) -> Any:
    """`spec[key]`, or an error naming `data.datasets.<name>.<key>` when it is missing or null."""
    value = spec.get(key)
    if value is None:
        raise ValueError(f"data.datasets.{name}.{key} is missing: {SPEC_KEYS[key]} (see conf/data/*.yaml)")
    return value
