"""The training CLI contract: `python -m vidseg.train task=T hydra.run.dir=RUN trainer.max_steps=N
checkpoint.every_n_steps=K` keeps RUN/checkpoints/last.ckpt, the same command + `ckpt_path=last` continues from
it; `task=multi` trains all five tasks jointly and its validation reports every task's metric."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vidseg.utils.audit import read_audit
from vidseg.utils.launch import QUICK, read_metrics, run_train

TASK_METRIC = {"vis": "AP", "vss": "mIoU", "vps": "VPQ", "vos": "J&F-Mean", "pet": "J&F-Mean"}


@pytest.mark.slow
def test_multi_trains_continues_from_last_and_validates_every_task(tmp_path: Path) -> None:
    run = tmp_path / "run"
    audit = ["+callbacks.audit._target_=vidseg.utils.audit.SamplerAudit", f"+callbacks.audit.dirpath={run}/audit"]
    base = [*QUICK, "task=multi", "data.chunk=1", f"hydra.run.dir={run}", "checkpoint.every_n_steps=2", *audit]
    run_train([*base, "trainer.max_steps=2", "validate=false"], timeout=900, log=tmp_path / "first.log")
    last = run / "checkpoints" / "last.ckpt"
    first = torch.load(last, map_location="cpu", weights_only=True)
    assert first["global_step"] == 2
    # the resolved run config travels in the checkpoint, so evaluate/predict rebuild the same model and tasks
    assert set(first["vidseg_config"]["tasks"]) == {"vis", "vss", "vps", "vos", "pet"}
    assert first["vidseg_config"]["model"]["_target_"] == "vidseg.model.tarvis.TarViS"
    assert read_metrics(run) == {}  # validate=false: nothing measured

    run_train([*base, "trainer.max_steps=5", "ckpt_path=last", "data.max_val_videos=1"], timeout=900,
              log=tmp_path / "second.log")
    # step 5 is not a multiple of every_n_steps=2: last.ckpt still holds the final weights
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 5
    assert [r["micro"] for r in read_audit(run / "audit")[0]] == [0, 1, 2, 3, 4]  # 2 steps, then 3 more
    metrics = read_metrics(run)
    for task, metric in TASK_METRIC.items():
        assert metric in metrics[task], (task, metrics.get(task))
    assert {k for k in metrics if "/" in k} == {
        "vis/syn_ytvis", "vss/syn_vspw", "vps/syn_vipseg", "vos/syn_davis", "pet/syn_davis_pet"}
    media = {p.name.split("__")[1] for p in (run / "media").glob("*.png")}
    assert media == set(TASK_METRIC)  # one overlay per task's dataset


def test_torch_threads_setting_sets_and_validates() -> None:
    from vidseg.utils.run import set_torch_threads

    before = torch.get_num_threads()
    try:
        set_torch_threads(1)
        assert torch.get_num_threads() == 1
        set_torch_threads(None)  # null keeps whatever is set
        assert torch.get_num_threads() == 1
        for bad in (0, "two", 1.5):
            with pytest.raises(ValueError, match="torch_threads"):
                set_torch_threads(bad)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("overrides", "mask_stride", "token_pool", "milestones"),
    [
        (["task=vos"], 2, {"vos": 2}, [600]),  # conf/recipe/tarvis_tiny_vos.yaml (with its lr drop)
        (["task=vos", "~recipe"], 4, {"vos": 1}, [100000]),  # the TarViS layout, conf/optim/tiny_cpu.yaml
        (["task=vis"], 2, {}, [1000]),  # conf/recipe/tarvis_tiny_vis.yaml: stride-2 masks and the lr drop
        (["task=vss"], 4, {}, [100000]),  # conf/recipe/tarvis_tiny_vss.yaml: lr 2e-3 only
        (["task=vps"], 4, {}, [1000]),  # conf/recipe/tarvis_tiny_vps.yaml: the lr drop only
        (["task=multi"], 4, {"vos": 1, "pet": 1}, [100000]),  # one shared model: no single task's tweaks
        (["task=pet"], 2, {"pet": 2}, [900]),  # conf/recipe/tarvis_tiny_pet.yaml, with the lr drop of VOS
        (["task=vos", "model=tarvis_r50"], 4, {"vos": 1}, [100000]),  # the tiny recipe only with the tiny model
    ],
)
def test_tiny_recipe_tweaks_apply_to_the_tiny_model_and_their_task_only(
    overrides: list[str], mask_stride: int, token_pool: dict[str, int], milestones: list[int]
) -> None:
    from hydra import compose, initialize_config_dir

    conf = str(Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    assert cfg.model.neck.get("mask_stride", 4) == mask_stride
    assert (list(cfg.model.backbone.get("strides", [4]))[0] == 2) == (mask_stride == 2)
    assert list(cfg.optim.milestones) == milestones
    assert cfg.optim.lr == (2e-3 if overrides == ["task=vss"] else 1e-3)
    assert {t: cfg.tasks[t].token_pool for t in cfg.tasks if "token_pool" in cfg.tasks[t]} == token_pool
    # test-time flips only where the tiny recipe pools tokens (its VOS/PET inference), never in the paper recipes
    assert {t: cfg.tasks[t].flip_tta for t in cfg.tasks if "flip_tta" in cfg.tasks[t]} == {
        t: pool == 2 for t, pool in token_pool.items()}
    # the tiny VOS recipe trains on mask prompts only; the paper recipes keep TarViS' PET objects (p = 0.3)
    if "vos" in cfg.tasks:
        assert cfg.tasks.vos.point_prob == (0.0 if token_pool["vos"] == 2 else 0.3)
        # the matching readout (ours) only in the tiny VOS recipe
        assert cfg.tasks.vos.matching == (token_pool["vos"] == 2)
