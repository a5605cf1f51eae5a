"""`python -m vidseg.evaluate ckpt=... [task=T] [data=D]` — run a checkpoint's task over the validation split
of every dataset of that task, write the official result files with each format's `write_results`, and print
and save the metrics (`metrics.json`, same layout as training's).

The model + tasks are rebuilt from the checkpoint's own config (`vidseg.inference.loading`); `task=` may be any
task the checkpoint has parameters for (hot-swap), and `data=` any data config whose datasets the task knows
(VIS/VPS/VSS: the same vocabulary names). Videos stream from disk in clips (no whole-video decode), resized
exactly like the validation loader, so the numbers equal the in-loop validation metrics.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from vidseg.data.formats import get_format
from vidseg.inference.loading import CheckpointMismatchError, check_vocabulary, load_run
from vidseg.predict import apply_clip_overrides, chosen_task, resolve_device

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate `cfg.ckpt` on the val split(s); returns {task: metrics, task/dataset: metrics}."""
    from tqdm.auto import tqdm

    from vidseg.inference.stream import DecodedFrames
    from vidseg.utils.run import build_datamodule, write_json_atomic

    run = load_run(cfg.ckpt, paths=cfg.paths, config=cfg.get("config"), device=resolve_device(cfg.device))
    task = run.task(chosen_task(cfg))
    apply_clip_overrides(task, cfg)
    data_cfg = cfg.data if cfg.get("data") is not None else run.cfg.data
    eval_cfg = run.cfg.copy()
    eval_cfg.data = data_cfg
    if cfg.get("split"):
        for spec in eval_cfg.data.datasets.values():
            spec.val_split = cfg.split
    dm = build_datamodule(eval_cfg, [task.name])
    dm.prepare_data()
    names = dm.val_names()
    if not names:
        raise CheckpointMismatchError(f"data: no dataset of task {task.name!r} has a val_split to evaluate")
    out_dir = Path(cfg.paths.output_dir)
    results: dict[str, Any] = {}
    files: dict[str, str] = {}
    for name in names:
        record = dm.val_records[name]
        check_vocabulary(task, name, record.categories)
        spec = dm.specs[name]
        ev = spec.get("eval") or {}
        short, max_dim = int(ev.get("short", 96)), int(ev.get("max_dim", 1333))
        limit = cfg.get("max_videos") or ev.get("max_videos")
        videos = record.videos if limit is None else record.videos[: int(limit)]
        metric = task.make_metric(record)
        preds = []
        for video in tqdm(videos, desc=f"{task.name}/{name}", unit="video", disable=not cfg.get("progress", True)):
            frames = DecodedFrames(video, short, max_dim, backend=cfg.get("backend", "auto"))
            try:
                pred = task.predict_video(run.model, frames, video, name)
            finally:
                frames.close()
            metric.update(pred, video)
            preds.append(pred)
        fmt = get_format(spec["format"])
        subset = record if limit is None else _with_videos(record, videos)
        files[name] = str(fmt.write_results(out_dir / "results" / name, preds, subset))
        values = {k: float(v) for k, v in metric.compute().items() if _is_scalar(v)}
        results[f"{task.name}/{name}"] = values
        results.setdefault(task.name, dict(values))
        log.info("%s/%s: %s", task.name, name, json.dumps(values))
    write_json_atomic(out_dir / "metrics.json", results)
    write_json_atomic(out_dir / "result_files.json", files)
    print(json.dumps(results, indent=2))
    return results


def _with_videos(record: Any, videos: list) -> Any:
    import dataclasses

    return dataclasses.replace(record, videos=list(videos))


def _is_scalar(v: Any) -> bool:
    import torch

    if isinstance(v, torch.Tensor):
        return v.numel() == 1
    return isinstance(v, int | float)


@hydra.main(version_base="1.3", config_path="../../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if cfg.get("print_config"):
        print(OmegaConf.to_yaml(cfg))
    evaluate(cfg)


if __name__ == "__main__":
    main()
