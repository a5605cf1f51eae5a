"""`vidseg.evaluate`: result files written for each task are read back by our readers, and our metrics on them
equal the in-loop validation metrics of the same checkpoint; checkpoint errors are clear."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from tests.inference._tiny import DATASET_OF, build_tiny, compose, save_run

from vidseg.data.formats import get_format
from vidseg.evaluate import evaluate
from vidseg.inference.loading import CheckpointMismatchError


@pytest.fixture(scope="module")
def vidseg_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vidseg_eval_cache")


def _validate(module, dm) -> dict:
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, datamodule=dm, verbose=False)
    return module.final_metrics


@pytest.mark.slow
@pytest.mark.parametrize("task", ["vis", "vps", "vss", "vos", "pet"])
def test_evaluate_files_reproduce_in_loop_metrics(task: str, tmp_path: Path, vidseg_cache: Path) -> None:
    name = DATASET_OF[task]
    extra = [f"+data.datasets.{name}.eval.max_videos=3"]
    if task in ("vis", "vps"):
        extra += [f"tasks.{task}.clip_len=8", f"tasks.{task}.clip_overlap=4"]  # stitching active on 12-24 frames
    cfg, module, dm = build_tiny(task, vidseg_cache, tmp_path / "train", extra)
    in_loop = _validate(module, dm)[f"{task}/{name}"]
    ckpt = save_run(cfg, module, tmp_path / "run")
    ecfg = compose("evaluate", [f"ckpt={ckpt}", f"paths.cache_dir={vidseg_cache}",
                                f"paths.output_dir={tmp_path / 'eval'}", "progress=false", "device=cpu"])
    torch.manual_seed(0)
    got = evaluate(ecfg)[f"{task}/{name}"]
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved[task] == got
    files = json.loads((tmp_path / "eval" / "result_files.json").read_text())
    record = dm.val_records[name]
    subset = type(record)(**{**record.__dict__, "videos": record.videos[:3]})
    preds = get_format(dm.specs[name]["format"]).read_results(Path(files[name]), subset)
    assert [p.video_id for p in preds] == [v.video_id for v in subset.videos]
    metric = module.tasks[task].make_metric(subset)
    for pred, video in zip(preds, subset.videos):
        metric.update(pred, video)
    from_files = {k: float(v) for k, v in metric.compute().items() if getattr(v, "numel", lambda: 1)() == 1}
    for key, value in in_loop.items():
        assert math.isclose(from_files[key], value, rel_tol=1e-9, abs_tol=1e-9) or (
            math.isnan(value) and math.isnan(from_files[key])), (key, from_files[key], value)
        assert math.isclose(got[key], value, rel_tol=1e-9, abs_tol=1e-9) or math.isnan(value), key


@pytest.mark.slow
def test_evaluate_errors_for_missing_task_and_other_model(tmp_path: Path, vidseg_cache: Path) -> None:
    cfg, module, _ = build_tiny("vos", vidseg_cache, tmp_path / "train")
    ckpt = save_run(cfg, module, tmp_path / "run")
    base = [f"ckpt={ckpt}", f"paths.cache_dir={vidseg_cache}", f"paths.output_dir={tmp_path / 'eval'}",
            "progress=false", "device=cpu"]
    with pytest.raises(CheckpointMismatchError, match="no queries/parameters for task 'vis'.*'vos'"):
        evaluate(compose("evaluate", [*base, "task=vis"]))
    # the same weights under a config of another model size: a clear mismatch error naming the checkpoint
    other = compose("train", ["task=vos", "model.decoder.d_model=32", "model.neck.d_model=32"])
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text(__import__("omegaconf").OmegaConf.to_yaml(other))
    with pytest.raises(CheckpointMismatchError, match=r"last\.ckpt: weights do not fit"):
        evaluate(compose("evaluate", base))
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="bad.ckpt"):
        evaluate(compose("evaluate", [*base[1:], f"ckpt={bad}"]))
