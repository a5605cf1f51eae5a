"""Every conf/model config instantiates through Hydra and produces correctly shaped outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vidseg.model.queries import LearnedQueries, QuerySet
from vidseg.model.tarvis import TarViS

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"
CONFIGS = ["tarvis_tiny", "tarvis_r50", "tarvis_swin_t", "tarvis_swin_l"]
PAPER = {"d_model": 256, "neck_layers": 6, "decoder_layers": 9, "heads": 8, "neck_ffn": 1024, "decoder_ffn": 2048}


def _build(name: str) -> tuple[TarViS, QuerySet]:
    torch.manual_seed(0)
    model = instantiate(OmegaConf.load(CONF / f"{name}.yaml"), vocabularies={"v": 3}, groups=["instance"])
    inst = LearnedQueries(model.d_model, 4)
    return model, QuerySet([inst.group("instance"), model.semantic_bank.group("v")])


def _check_forward(model: TarViS, qs: QuerySet, b: int, t: int, h: int, w: int) -> None:
    frames = torch.randint(0, 256, (b, t, 3, h, w), dtype=torch.uint8)
    model.eval()
    with torch.no_grad():
        feats = model.encode(frames)
        out = model.decode(feats, qs)
    d = model.d_model
    assert [tuple(f.shape) for f in feats.features] == [(b, t, d, h // s, w // s) for s in (32, 16, 8)]
    assert feats.mask_features.shape == (b, t, d, h // 4, w // 4)
    assert out.num_predictions == model.decoder.num_layers + 1
    for logits in out.mask_logits:
        assert logits.shape == (b, 7, t, h // 4, w // 4)
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", CONFIGS)
def test_config_fields(name: str) -> None:
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    assert cfg._target_ == "vidseg.model.tarvis.TarViS"
    assert cfg.backbone.pretrained is False and "pretrained_file" in cfg.backbone
    assert cfg.backbone.pretrained_file is None
    assert cfg.precision == "32" and cfg.compile is False
    assert cfg.neck.d_model == cfg.decoder.d_model
    if name != "tarvis_tiny":
        got = {"d_model": cfg.decoder.d_model, "neck_layers": cfg.neck.num_layers,
               "decoder_layers": cfg.decoder.num_layers, "heads": cfg.decoder.n_heads,
               "neck_ffn": cfg.neck.ffn_dim, "decoder_ffn": cfg.decoder.ffn_dim}
        assert got == PAPER and cfg.neck.n_heads == 8
    else:
        assert 64 <= cfg.decoder.d_model <= 128 and cfg.neck.num_layers <= 2
        assert cfg.decoder.num_layers == 3 and cfg.decoder.n_heads == 4


@pytest.mark.parametrize(("h", "w"), [(64, 64), (128, 64), (128, 128)])
def test_tiny_shapes(h: int, w: int) -> None:
    model, qs = _build("tarvis_tiny")
    _check_forward(model, qs, 2, 3, h, w)


def test_r50_shapes_at_256() -> None:
    model, qs = _build("tarvis_r50")
    assert model.backbone.channels == [256, 512, 1024, 2048]
    _check_forward(model, qs, 1, 2, 256, 256)


@pytest.mark.parametrize(
    "name", ["tarvis_swin_t", pytest.param("tarvis_swin_l", marks=pytest.mark.slow)]  # swin_l: 200M params
)
def test_swin_shapes(name: str) -> None:
    model, qs = _build(name)
    _check_forward(model, qs, 1, 2, 128, 128)
