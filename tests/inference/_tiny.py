"""Helpers of the inference and CLI tests: a tiny model + tasks built from the repo's configs (random init, no
training), checkpoints written the way training writes them, and small synthetic videos."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf"
DATASET_OF = {"vis": "syn_ytvis", "vps": "syn_vipseg", "vss": "syn_vspw", "vos": "syn_davis", "pet": "syn_davis_pet"}


@pytest.fixture(scope="session")
def vidseg_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vidseg_inference_cache")


def compose(config: str, overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name=config, overrides=overrides)


def train_config(task: str, cache: Path, out: Path, extra: list[str] = ()) -> DictConfig:
    """The training config of `python -m vidseg.train task=T` with paths pointed at the test folders."""
    return compose("train", [f"task={task}", "logger=none", f"paths.cache_dir={cache}",
                             f"paths.output_dir={out}", "trainer.accelerator=cpu", "trainer.devices=1", *extra])


def build_tiny(task: str, cache: Path, out: Path, extra: list[str] = (), seed: int = 0) -> tuple[Any, Any, Any]:
    """(cfg, module, datamodule) built exactly as training builds them; random init seeded by `seed`."""
    from vidseg.utils.run import build_datamodule, build_module

    cfg = train_config(task, cache, out, list(extra))
    cfg.run_name = "test"
    torch.manual_seed(seed)
    dm = build_datamodule(cfg, list(cfg.tasks))
    dm.prepare_data()
    module = build_module(cfg, dm)
    module.eval()
    return cfg, module, dm


def save_run(cfg: DictConfig, module: Any, run_dir: Path) -> Path:
    """A checkpoint as training leaves it: <run>/checkpoints/last.ckpt + <run>/.hydra/config.yaml."""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "global_step": 0}, ckpt)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return ckpt


def moving_disc_frames(n: int, h: int, w: int, radius: float, speed: float = 1.0, seed: int = 0) -> np.ndarray:
    """uint8 [n, h, w, 3]: a bright disc moving slowly left to right over a textured background."""
    rng = np.random.default_rng(seed)
    bg = (rng.integers(40, 90, size=(h, w, 3))).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    for t in range(n):
        cx, cy = radius + 2 + speed * t % max(w - 2 * radius - 4, 1), h / 2
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
        out[t] = bg
        out[t][disc] = (230, 200, 40)
    return out
