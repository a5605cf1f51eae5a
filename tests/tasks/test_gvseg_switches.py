"""GvSeg switches: all off == plain TarViS bit for bit; each switch changes the computation; the ablation
multirun runs end to end and its table script reads it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from vidseg.utils.run import build_datamodule, build_module

ROOT = Path(__file__).resolve().parents[2]
OFF = "{spa: false, task_init: false, contrastive: false}"


def _losses(task: str, cache: Path, extra: list[str]) -> dict[str, torch.Tensor]:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"task={task}", f"paths.cache_dir={cache}", "paths.output_dir=/tmp/x",
                                          "data.batch_size=2", *extra])
    torch.manual_seed(0)
    dm = build_datamodule(cfg, [task])
    dm.prepare_data()
    module = build_module(cfg, dm)
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(1)
    losses, _ = module.forward_task(batch)
    return {k: v.detach() for k, v in losses.items()}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.mark.slow
@pytest.mark.parametrize("task", ["vis", "vps", "vss", "vos"])
def test_all_switches_off_is_plain_tarvis_bit_for_bit(task: str, cache: Path) -> None:
    plain = _losses(task, cache, [])
    off = _losses(task, cache, [f"+tasks.{task}.gvseg={OFF}"])
    assert plain.keys() == off.keys()
    for k in plain:
        assert torch.equal(plain[k], off[k]), k


@pytest.mark.slow
@pytest.mark.parametrize(("switch", "new_term"), [("spa", None), ("task_init", None), ("contrastive", "contrastive")])
def test_each_switch_changes_the_vps_computation(switch: str, new_term: str | None, cache: Path) -> None:
    plain = _losses("vps", cache, [])
    on = _losses("vps", cache, [f"+tasks.vps.gvseg={{{switch}: true, grid: 4}}"])
    if new_term:  # an extra loss term; the TarViS terms are computed exactly as before
        assert new_term not in plain and torch.isfinite(on[new_term]) and float(on[new_term]) > 0
        assert all(torch.equal(plain[k], on[k]) for k in plain)
    else:
        assert any(not torch.equal(plain[k], on[k]) for k in plain), f"{switch} did not change any loss term"


def _ablation_batch(row: str, cache: Path) -> tuple[object, object, object]:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=gvseg_ablation", f"+gvseg={row}", f"paths.cache_dir={cache}",
                                          "paths.output_dir=/tmp/x", "data.batch_size=2"])
    torch.manual_seed(0)
    dm = build_datamodule(cfg, ["vps"])
    dm.prepare_data()
    module = build_module(cfg, dm)
    return dm, module, next(iter(dm.train_dataloader()))


@pytest.mark.slow
def test_ablation_contrastive_rows_draw_a_distant_reference_frame(cache: Path) -> None:
    """Rows with the contrastive switch prepend a distant reference (clip frame 0) to the same TarViS clip."""
    dm, _, plain = _ablation_batch("baseline", cache)
    assert not dm._clip_dataset("syn_vipseg").sampler.distant_reference
    dm, module, ref = _ablation_batch("contrastive", cache)
    assert dm._clip_dataset("syn_vipseg").sampler.distant_reference
    assert plain.frames.shape[1] == 3 and ref.frames.shape[1] == 4
    for p, r in zip(plain.samples, ref.samples, strict=True):
        assert p.frame_indices == sorted(p.frame_indices)
        assert r.frame_indices[1:] == p.frame_indices and r.frame_indices[0] not in p.frame_indices
    torch.manual_seed(1)
    losses, _ = module.forward_task(ref)
    assert torch.isfinite(losses["contrastive"]) and all(torch.isfinite(v) for v in losses.values())


@pytest.mark.slow
def test_ablation_multirun_end_to_end(tmp_path: Path, cache: Path) -> None:
    sweep = tmp_path / "sweep"
    env = {**os.environ, "VIDSEG_CACHE": str(cache), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "vidseg.train", "-m", "experiment=gvseg_ablation", "trainer.max_steps=2",
           "data.batch_size=1", "data.max_val_videos=1", f"paths.cache_dir={cache}", f"hydra.sweep.dir={sweep}",
           "print_config=false"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = subprocess.run([sys.executable, str(ROOT / "scripts" / "gvseg_ablation_table.py"), str(sweep)],
                           capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if line.startswith("| ") and "VPQ" not in line]
    assert len(rows) == 5, table.stdout
    assert rows[0].startswith("| TarViS baseline") and rows[-1].startswith("| all GvSeg components")
