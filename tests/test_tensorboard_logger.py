"""`logger=tensorboard` (for users without W&B): a short run writes TensorBoard event files holding the loss
terms, the validation metric and the validation mask overlays."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vidseg.utils.launch import QUICK, run_train


def test_tensorboard_logger_writes_scalars_and_images(tmp_path: Path) -> None:
    run = tmp_path / "run"
    overrides = [o for o in QUICK if not o.startswith("logger=")]
    run_train([*overrides, "task=vss", "logger=tensorboard", f"hydra.run.dir={run}", "trainer.max_steps=3",
               "data.max_val_videos=1"], timeout=600, log=tmp_path / "train.log")
    events = sorted((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert events, f"no event file under {run / 'tensorboard'}"
    acc = EventAccumulator(str(events[0].parent), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/vss/loss", "train/vss/semantic", "train/grad_norm", "train/clips_per_s",
            "train/lr/rest", "val/vss/syn_vspw/mIoU"} <= scalars, sorted(scalars)
    assert [s.step for s in acc.Scalars("train/loss")][:3] == [0, 1, 2]
    assert any(t.startswith("val_media/vss/") for t in acc.Tags()["images"]), acc.Tags()["images"]
