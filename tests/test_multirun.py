"""Hydra multirun: `python -m vidseg.train -m task=vis,vos ...` gives two runs, each with its own metrics.json and
its own offline W&B run whose history holds the loss terms, the metrics, the learning rates, the throughput and
a mask-overlay image + GIF per task; the same sweep through `hydra/launcher=submitit_local` (the stand-in for
submitit_slurm) also yields one metrics.json per job."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vidseg.utils.launch import read_metrics, run_train
from vidseg.utils.wandb_offline import offline_runs, read_offline_run

TINY = ["trainer.max_steps=2", "data.batch_size=1", "trainer.accelerator=cpu", "data.max_val_videos=1",
        "print_config=false", "trainer.log_every_n_steps=1"]
METRIC = {"vis": "AP", "vos": "J&F-Mean"}
DATASET = {"vis": "syn_ytvis", "vos": "syn_davis"}


def _job_dirs(sweep: Path) -> dict[str, Path]:
    """{task: job output dir} of a sweep (Hydra numbers the jobs 0, 1, ...)."""
    out = {}
    for cfg in sorted(sweep.glob("*/.hydra/overrides.yaml")):
        task = next(o.split("=", 1)[1] for o in yaml.safe_load(cfg.read_text()) if o.startswith("task="))
        out[task] = cfg.parent.parent
    return out


@pytest.mark.slow
def test_multirun_gives_separate_runs_with_metrics_and_wandb_media(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    # WANDB_MODE unset: the config's offline mode applies (conftest disables W&B for in-process tests)
    run_train(["task=vis,vos", *TINY, f"hydra.sweep.dir={sweep}"], multirun=True, timeout=900,
              env={"WANDB_MODE": "offline"}, log=tmp_path / "sweep.log")
    jobs = _job_dirs(sweep)
    assert sorted(jobs) == ["vis", "vos"] and jobs["vis"] != jobs["vos"]
    run_ids = set()
    for task, job in jobs.items():
        metrics = read_metrics(job)
        assert set(metrics) == {task, f"{task}/{DATASET[task]}"}
        assert METRIC[task] in metrics[task]
        files = offline_runs(job)
        assert len(files) == 1, files  # one W&B run per job, closed before the next job started
        run = read_offline_run(files[0])
        run_ids.add(run.run_id)
        keys = run.history_keys
        other = "vos" if task == "vis" else "vis"
        assert f"train/{task}/loss" in keys and not any(k.startswith(f"train/{other}/") for k in keys)
        assert {f"train/{task}/bce", f"train/{task}/dice", "train/clips_per_s", "train/lr/rest"} <= keys
        assert f"val/{task}/{DATASET[task]}/{METRIC[task]}" in keys
        images = run.media_keys("image-file")
        gifs = run.media_keys("video-file")
        assert images and all(k.startswith(f"val_media/{task}/{DATASET[task]}/") for k in images)
        assert gifs and all(k.startswith(f"val_media/{task}/") for k in gifs)
        assert {"model", "tasks", "optim", "data", "derived"} <= run.config_keys  # the resolved config
        assert list(files[0].parent.glob("files/media/images/val_media/**/*.png"))
    assert len(run_ids) == 2


@pytest.mark.slow
def test_submitit_local_launcher_runs_each_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run_train(["hydra/launcher=submitit_local", "task=vos", "seed=1,2", *TINY, "trainer.max_steps=1",
               "logger=csv", f"hydra.sweep.dir={sweep}"], multirun=True, timeout=900, log=tmp_path / "sweep.log")
    jobs = sorted(p.parent.parent for p in sweep.glob("*/.hydra/overrides.yaml"))
    assert len(jobs) == 2
    for job in jobs:
        assert "J&F-Mean" in read_metrics(job)["vos"]
        assert (job / "checkpoints" / "last.ckpt").is_file()
    assert list(sweep.glob(".submitit/*/*_result.pkl"))  # the jobs really went through submitit
