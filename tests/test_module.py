"""VidsegModule: the forward path (query adders reach the decoder), per-micro-batch RNG seeding, non-finite
losses skipped and counted (injected NaN in a real tiny run), parameter groups; run helpers; media overlays."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback
from PIL import Image
from pycocotools import mask as mask_utils
from torch import nn

from vidseg.data.records import PAD_VALUE, Batch, ClipSample, TrackPrediction, VideoPrediction
from vidseg.module import VidsegModule, seed_step_rngs
from vidseg.tasks.base import Task
from vidseg.utils.launch import default_cache
from vidseg.utils.media import id_colours, log_overlays, overlay_video, prediction_id_maps
from vidseg.utils.run import accumulation_for, build_run, resolve_ckpt_path

CONF = Path(__file__).resolve().parents[1] / "conf"


# ---------------------------------------------------------------------------------------------- forward path
class _RecordingModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.decode_args: tuple = ()

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.float().mean() * self.w

    def decode(self, feats: Any, query_set: Any, query_adders: Any = None) -> torch.Tensor:
        self.decode_args = (feats, query_set, query_adders)
        return feats * 2


class _Queries:
    def __init__(self, adders: Any) -> None:
        self.query_adders = adders


class _RecordingTask(Task):
    name = "rec"

    def __init__(self, adders: Any) -> None:
        super().__init__()
        self.adders = adders

    def init_queries(self, model: Any, feats: Any, batch: Batch) -> Any:
        return _Queries(self.adders) if self.adders is not None else object()

    def loss(self, model: Any, feats: Any, queries: Any, out: Any, batch: Batch) -> dict[str, torch.Tensor]:
        return {"a": out, "b": out * 0 + 1}

    def predict_video(self, model: Any, video: Any, record: Any, dataset: str) -> VideoPrediction:
        raise NotImplementedError

    def make_metric(self, dataset: Any) -> Any:
        raise NotImplementedError


def _batch() -> Batch:
    frames = torch.full((1, 2, 3, 8, 8), 4, dtype=torch.uint8)
    sample = ClipSample(frames=frames[0], masks=torch.zeros(0, 2, 8, 8, dtype=torch.bool),
                        track_ids=torch.zeros(0, dtype=torch.int64), class_ids=torch.zeros(0, dtype=torch.int64),
                        pad_mask=torch.ones(8, 8, dtype=torch.bool), video_id="v0", dataset="d")
    return Batch(task="rec", dataset="d", frames=frames, pad_mask=torch.ones(1, 8, 8, dtype=torch.bool),
                 samples=[sample])


@pytest.mark.parametrize("adders", [{"instance": "spa"}, None])
def test_forward_task_passes_the_query_adders_to_decode(adders: Any) -> None:
    model = _RecordingModel()
    module = VidsegModule(model, {"rec": _RecordingTask(adders)}, {"lr": 1e-3, "weight_decay": 0.0})
    losses, out = module.forward_task(_batch())
    feats, queries, passed = model.decode_args
    assert passed == adders
    assert float(feats.detach()) == 4.0 and float(out.detach()) == 8.0
    assert {k: float(v.detach()) for k, v in losses.items()} == {"a": 8.0, "b": 1.0}


def test_forward_task_finishes_crops_left_for_the_device() -> None:
    """A batch whose frames are still crops (data.resize_on_device) is resized before the encoder sees it."""
    model = _RecordingModel()
    module = VidsegModule(model, {"rec": _RecordingTask(None)}, {"lr": 1e-3, "weight_decay": 0.0})
    crop = torch.full((1, 2, 3, 4, 6), 10, dtype=torch.uint8)  # a 4x6 crop to become 6x6 in the 8x8 canvas
    batch = replace(_batch(), frames=crop, device_resize=torch.tensor([[4, 6, 6, 6, 1]]))
    module.forward_task(batch)
    feats = model.decode_args[0]
    assert float(feats.detach()) == pytest.approx((36 * 10 + 28 * PAD_VALUE) / 64)  # resized, then padded


def test_param_groups_are_named_and_split_by_backbone_and_decay() -> None:
    model = nn.Module()
    model.backbone = nn.Linear(2, 2)
    model.head = nn.Linear(2, 2)
    model.norm = nn.LayerNorm(2)
    optim = {"lr": 1e-3, "weight_decay": 0.05, "backbone_lr_mult": 0.1}
    module = VidsegModule(model, {}, optim)
    groups = module.configure_optimizers()["optimizer"].param_groups
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"backbone", "backbone_no_wd", "rest", "rest_no_wd"}
    assert by_name["backbone"]["lr"] == pytest.approx(1e-4) and by_name["rest"]["lr"] == pytest.approx(1e-3)
    assert by_name["rest_no_wd"]["weight_decay"] == 0.0 and by_name["rest"]["weight_decay"] == 0.05
    assert len(by_name["rest"]["params"]) == 1  # head.weight; biases and the norm go to no_wd


def test_fused_adamw_is_chosen_on_cpu_and_matches_the_loop() -> None:
    def trained(fused: object) -> tuple[dict, list[torch.Tensor]]:
        torch.manual_seed(0)
        model = nn.Module()
        model.backbone, model.head = nn.Linear(3, 4), nn.Linear(4, 2)
        module = VidsegModule(model, {}, {"lr": 1e-2, "weight_decay": 0.05, "fused": fused})
        opt = module.configure_optimizers()["optimizer"]
        for _ in range(3):
            opt.zero_grad()
            model.head(model.backbone(torch.randn(5, 3))).square().mean().backward()
            opt.step()
        return opt.defaults, [p.detach().clone() for p in model.parameters()]

    auto, loop = trained("auto"), trained(False)
    assert auto[0]["fused"] is True and not loop[0]["fused"]
    for a, b in zip(auto[1], loop[1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="optim.fused"):
        trained("yes")


def test_seed_step_rngs_is_a_function_of_seed_rank_and_micro_batch() -> None:
    def draws(seed: int, rank: int, micro: int) -> tuple:
        seed_step_rngs(seed, rank, micro)
        return (torch.rand(3).tolist(), np.random.rand(2).tolist(), random.random())

    a = draws(1, 0, 5)
    torch.rand(100)  # whatever ran before does not matter
    assert draws(1, 0, 5) == a
    assert draws(1, 0, 6) != a and draws(1, 1, 5) != a and draws(2, 0, 5) != a


# ---------------------------------------------------------------------------------------------- run helpers
def test_accumulation_from_global_batch() -> None:
    assert accumulation_for(None, 4, 2, configured=3) == 3
    assert accumulation_for(16, 4, 2) == 2
    assert accumulation_for(16, 2, 1) == 8
    with pytest.raises(ValueError, match="global_batch=10 is not a multiple"):
        accumulation_for(10, 4, 1)


def test_resolve_ckpt_path(tmp_path: Path) -> None:
    cfg = _compose(tmp_path, ["ckpt_path=last"])
    assert resolve_ckpt_path(cfg) is None  # nothing yet: start fresh
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"x")
    assert resolve_ckpt_path(cfg) == str(last)
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        resolve_ckpt_path(_compose(tmp_path, [f"ckpt_path={tmp_path}/nope.ckpt"]))


# ---------------------------------------------------------------------------------------------- non-finite loss
def _compose(out: Path, overrides: list[str]) -> Any:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[
            "task=vos", "logger=csv", "run_name=test", f"paths.output_dir={out}", f"paths.cache_dir={default_cache()}",
            "data.batch_size=1", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.limit_val_batches=0",
            "+trainer.enable_progress_bar=false", "~callbacks.rich_progress_bar", "checkpoint.every_n_steps=1000",
            *overrides,
        ])


class _ParamTrace(Callback):
    """Sum of all parameters after every micro-batch."""

    def __init__(self) -> None:
        self.sums: list[float] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.sums.append(float(sum(p.detach().double().sum() for p in pl_module.parameters())))


def _run_with_nan_at(tmp_path: Path, nan_steps: set[int], overrides: list[str]) -> tuple[Any, _ParamTrace, float]:
    cfg = _compose(tmp_path, ["trainer.max_steps=4", *overrides])
    run = build_run(cfg)
    task = run.module.tasks["vos"]
    original = task.loss

    def loss(*args: Any) -> dict[str, torch.Tensor]:
        terms = original(*args)
        if task.current_step in nan_steps:
            terms = {k: v * float("nan") for k, v in terms.items()}
        return terms

    task.loss = loss
    trace = _ParamTrace()
    run.trainer.callbacks.append(trace)
    start = float(sum(p.detach().double().sum() for p in run.module.parameters()))
    run.trainer.fit(run.module, datamodule=run.datamodule)
    return run, trace, start


def test_nonfinite_loss_is_skipped_and_counted(tmp_path: Path) -> None:
    run, trace, start = _run_with_nan_at(tmp_path, {1}, [])
    assert run.module.skipped_steps == 1
    assert run.trainer.global_step == 4
    sums = [start, *trace.sums]
    assert len(sums) == 5
    assert sums[2] == sums[1]  # the NaN step left every parameter as it was
    assert sums[1] != sums[0] and sums[3] != sums[2] and sums[4] != sums[3]
    assert all(np.isfinite(sums))
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["vidseg"]["skipped_steps"] == 1


def test_too_many_nonfinite_losses_stop_with_the_step_and_videos(tmp_path: Path) -> None:
    pattern = r"non-finite loss at step 2 .*task vos.*videos \['\w+'\].*more than 1"
    with pytest.raises(FloatingPointError, match=pattern):
        _run_with_nan_at(tmp_path, {1, 2}, ["max_nonfinite_skips=1"])


# ---------------------------------------------------------------------------------------------- media
def _rle(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def test_id_colours_match_colorsys() -> None:
    import colorsys

    ids = np.array([0, 1, 7, 123456, 1 << 30])
    for i, c in zip(ids, id_colours(ids), strict=True):
        ref = np.round(np.array(colorsys.hsv_to_rgb((i * 0.618033988749895 + 0.1) % 1.0, 0.75, 0.95)) * 255)
        assert c.tolist() == ref.tolist()


def test_overlay_blends_track_colours_inside_masks_and_keeps_other_pixels() -> None:
    h, w = 8, 12
    m = np.zeros((h, w), bool)
    m[2:5, 3:7] = True
    pred = VideoPrediction("v", h, w, ["0", "1"], tracks=[TrackPrediction(7, 1, 0.9, [_rle(m), None])])
    frames = torch.full((2, 3, 16, 16), 100, dtype=torch.uint8)
    frames[:, :, h:, :] = 128  # padding, cropped away
    out = overlay_video(frames, (h, w), pred, alpha=0.5)
    assert out.shape == (2, h, w, 3) and out.dtype == np.uint8
    colour = id_colours(np.array([7]))[0].astype(float)
    assert out[0][m].tolist() == [np.round(0.5 * 100 + 0.5 * colour).tolist()] * int(m.sum())
    assert (out[0][~m] == 100).all() and (out[1] == 100).all()


def test_overlay_resizes_prediction_to_the_eval_frames() -> None:
    sem = np.zeros((20, 40), np.int32)
    sem[:, 20:] = 3
    sem[:10, :5] = 255  # ignored: no colour
    pred = VideoPrediction("v", 20, 40, ["0"], semantic_maps=[sem])
    ids, valid = prediction_id_maps(pred)
    assert ids.shape == (1, 20, 40) and not valid[0, 0, 0] and valid[0, 15, 0]
    frames = torch.zeros((1, 3, 64, 64), dtype=torch.uint8)
    out = overlay_video(frames, (10, 20), pred, alpha=1.0)  # eval frames at half size
    c0, c3 = id_colours(np.array([(1 << 30), (1 << 30) + 3]))
    assert out[0, 8, 2].tolist() == c0.tolist() and out[0, 8, 15].tolist() == c3.tolist()
    assert out[0, 0, 0].tolist() == [0, 0, 0]


def test_panoptic_ids_separate_instances_of_one_class() -> None:
    sem = np.full((4, 4), 2, np.int32)
    inst = np.zeros((4, 4), np.int32)
    inst[:, 2:] = 1
    ids, valid = prediction_id_maps(VideoPrediction("v", 4, 4, ["0"], panoptic_maps=[(sem, inst)]))
    assert len(np.unique(ids)) == 2 and valid.all()


def test_log_overlays_writes_an_image_and_a_gif(tmp_path: Path) -> None:
    overlay = np.random.default_rng(0).integers(0, 255, (5, 6, 8, 3), dtype=np.uint8)
    paths = log_overlays([], "val_media/vis/ds/v1", overlay, step=3, media_dir=tmp_path)
    strip = np.asarray(Image.open(paths["image"]))
    assert strip.shape == (6, 8 * 4, 3)  # 4 frames spread over the video, side by side
    assert (strip[:, :8] == overlay[0]).all() and (strip[:, -8:] == overlay[-1]).all()
    gif = Image.open(paths["gif"])
    assert gif.n_frames == 5


# ---------------------------------------------------------------------------------------------- model bf16 on CPU
@pytest.mark.slow
@pytest.mark.parametrize("task", ["vis", "vss", "vps", "vos", "pet"])
def test_model_bf16_autocast_trains_and_validates_every_task(tmp_path: Path, task: str) -> None:
    """`model.precision=bf16` (the model's own autocast, no Lightning precision plugin): the task's query
    encoders and losses run under it too, so bf16 features never meet fp32 weights or targets (before, every
    task but VSS failed with a dtype mismatch); training steps change the weights and validation scores."""
    cfg = _compose(tmp_path, [f"task={task}", "model.precision=bf16", "trainer.max_steps=2",
                              "trainer.limit_val_batches=1.0", "data.max_val_videos=1"])  # fmt: skip
    run = build_run(cfg)
    assert run.module.model.precision == "bf16"
    trace = _ParamTrace()
    run.trainer.callbacks.append(trace)
    run.trainer.fit(run.module, datamodule=run.datamodule)
    assert run.trainer.global_step == 2 and run.module.skipped_steps == 0
    assert len(trace.sums) == 2 and trace.sums[0] != trace.sums[1] and np.isfinite(trace.sums).all()
    run.trainer.validate(run.module, datamodule=run.datamodule, verbose=False)
    scores = run.module.final_metrics[task]
    assert scores and all(np.isfinite(float(v)) for v in scores.values()), scores
