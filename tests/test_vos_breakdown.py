"""scripts/vos_breakdown.py: per-object J of DAVIS result PNGs, checked against our DAVIS J&F metric."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vidseg.data.formats import get_format
from vidseg.data.records import TrackPrediction, VideoPrediction
from vidseg.data.synthetic import ensure_synthetic
from vidseg.inference.resize import masks_to_rles
from vidseg.metrics.jf import DavisJF

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from vos_breakdown import breakdown  # noqa: E402


def _predictions(record, shift: int) -> list[VideoPrediction]:
    """Every first-frame object's GT masks, shifted right by `shift` px from frame 1 on (0 = perfect)."""
    preds = []
    for video in record.videos:
        tracks = []
        for prompt in (p for p in video.prompts if p.frame == 0):
            masks = []
            for t in range(video.num_frames):
                m = video.annotation_at(t).decode().masks.get(prompt.track_id)
                m = np.zeros((video.height, video.width), bool) if m is None else m
                if t > 0 and shift:
                    m = np.roll(m, shift, axis=1)
                    m[:, :shift] = False
                masks.append(masks_to_rles(torch.from_numpy(m)[None])[0])
            tracks.append(TrackPrediction(prompt.track_id, None, 1.0, masks))
        preds.append(VideoPrediction(video.video_id, video.height, video.width, list(video.frames.names), tracks))
    return preds


@pytest.mark.parametrize("shift", [0, 3])
def test_breakdown_matches_the_davis_metric(tmp_path: Path, shift: int) -> None:
    root = ensure_synthetic("davis", tmp_path / "cache", seed=3, videos_train=1, videos_val=3)
    record = get_format("davis").read(root, "val")
    preds = _predictions(record, shift)
    out = get_format("davis").write_results(tmp_path / "pred", preds, record)
    result = breakdown(root, out, "val")
    metric = DavisJF()
    for pred, video in zip(preds, record.videos):
        metric.update(pred, video)
    expected = float(metric.compute()["J-Mean"])
    assert result["J-Mean (objects)"] == pytest.approx(expected, abs=1e-4)
    counts = {int(k): v["n"] for k, v in result["by_objects_in_video"].items()}
    assert counts == {k: k * n for k, n in _videos_per_count(record).items()}
    if shift == 0:
        assert expected == 1.0
        assert all(v["J"] == 1.0 for group in result.values() if isinstance(group, dict) for v in group.values())
    else:
        assert result["J-Mean (objects)"] < 0.95


def _videos_per_count(record) -> dict[int, int]:
    counts: dict[int, int] = {}
    for video in record.videos:
        n = sum(p.frame == 0 for p in video.prompts)
        counts[n] = counts.get(n, 0) + 1
    return counts


def test_breakdown_names_a_missing_prediction(tmp_path: Path) -> None:
    root = ensure_synthetic("davis", tmp_path / "cache", seed=3, videos_train=1, videos_val=1)
    with pytest.raises(FileNotFoundError, match="no prediction PNG"):
        breakdown(root, tmp_path / "empty", "val")
