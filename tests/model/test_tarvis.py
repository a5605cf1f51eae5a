"""The TarViS wrapper: encode/decode on the tiny config, gradients, determinism, bf16, task independence."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

import vidseg.model
from vidseg.model.decoder import classify
from vidseg.model.queries import LearnedQueries, QuerySet
from vidseg.model.tarvis import TarViS

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"


def _tiny(seed: int = 0, **overrides) -> tuple[TarViS, QuerySet]:
    torch.manual_seed(seed)
    cfg = OmegaConf.load(CONF / "tarvis_tiny.yaml")
    for k, v in overrides.items():
        OmegaConf.update(cfg, k, v)
    model = instantiate(cfg, vocabularies={"ytvis": 4}, groups=["instance", "background"])
    inst, bg = LearnedQueries(model.d_model, 6), LearnedQueries(model.d_model, 1)
    model.inst, model.bg = inst, bg  # registered so the gradient check covers them
    return model, QuerySet([inst.group("instance"), bg.group("background"), model.semantic_bank.group("ytvis")])


def _frames(b: int = 2, t: int = 2, h: int = 64, w: int = 128, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, 3, h, w), generator=g, dtype=torch.uint8)


def test_encode_decode_shapes() -> None:
    model, qs = _tiny()
    feats = model.encode(_frames())
    assert [tuple(f.shape) for f in feats.features] == [(2, 2, 64, 2, 4), (2, 2, 64, 4, 8), (2, 2, 64, 8, 16)]
    assert feats.mask_features.shape == (2, 2, 64, 16, 32)
    out = model.decode(feats, qs)
    assert out.num_predictions == 4  # initial queries + 3 layers
    assert out.mask_logits[-1].shape == (2, 11, 2, 16, 32)
    assert out.group("semantic").mask_logits.shape == (2, 4, 2, 16, 32)


def test_stride2_masks_through_encode_decode_and_backward() -> None:
    """model.neck.mask_stride=2 with a stride-2 backbone map: masks at H/2, attention still on F32/F16/F8."""
    model, qs = _tiny(**{"backbone.strides": [2, 4, 8, 16, 32], "neck.mask_stride": 2})
    assert model.mask_stride == 2 and model.backbone.strides == [2, 4, 8, 16, 32]
    feats = model.encode(_frames())
    assert feats.mask_features.shape == (2, 2, 64, 32, 64)
    out = model.decode(feats, qs)
    assert out.mask_logits[-1].shape == (2, 11, 2, 32, 64)
    out.mask_logits[-1].square().mean().backward()
    assert model.neck.fine_lateral_conv[0].weight.grad.abs().sum() > 0
    first_conv = next(p for p in model.backbone.parameters() if p.dim() == 4)
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    with pytest.raises(InstantiationException, match="stride-2/4/8/16/32 maps, got"):
        _tiny(**{"neck.mask_stride": 2})  # the backbone was left at strides 4-32


def test_encode_normalises_uint8_like_float_input() -> None:
    model, _ = _tiny()
    frames = _frames(1, 1, 64, 64)
    with torch.no_grad():
        a = model.encode(frames).mask_features
        b = model.encode(frames.float()).mask_features
    assert torch.equal(a, b)


def test_bad_input_and_settings_raise() -> None:
    model, _ = _tiny()
    with pytest.raises(ValueError, match="multiple of 64"):
        model.encode(_frames(1, 1, 64, 96))
    with pytest.raises(ValueError, match=r"\[B, T, 3, H, W\]"):
        model.encode(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    # hydra wraps the model's ValueError; the message names the setting
    with pytest.raises(InstantiationException, match="precision must be one of"):
        _tiny(precision="16")
    with pytest.raises(InstantiationException, match="neck d_model 64 != decoder d_model 32"):
        _tiny(**{"decoder.d_model": 32})


def test_every_parameter_used_by_forward_gets_a_gradient() -> None:
    model, qs = _tiny()
    model.decoder.add_group("vos")  # not in the query set: must stay gradient-free
    model.semantic_bank.add_vocabulary("ovis", 3)
    # timm zero-inits the last BN of residual blocks and MSDeformAttn zero-inits its offset/weight layers, which
    # zeroes some gradients at step 0 by design; perturb every weight so a zero gradient means "not connected".
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = model(_frames(1, 2, 64, 64), qs)
    loss = sum(m.sigmoid().mean() for m in out.mask_logits)
    for layer in range(out.num_predictions):
        g = out.groups(layer)
        loss = loss + classify(g["instance"].embeddings, g["semantic"].embeddings,
                               g["background"].embeddings).logsumexp(-1).mean()
    loss.backward()
    unused = ("decoder.mask_heads.mask_mlps.vos.", "decoder.mask_heads.projections.vos.", "semantic_bank.queries.ovis")
    no_grad = []
    for name, p in model.named_parameters():
        if name.startswith(unused):
            assert p.grad is None, name
        elif p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0:
            no_grad.append(name)
    assert no_grad == []


def test_same_seed_gives_identical_outputs() -> None:
    results = []
    for _ in range(2):
        model, qs = _tiny(seed=7)
        with torch.no_grad():
            results.append(model(_frames(seed=1), qs).mask_logits)
    assert all(torch.equal(a, b) for a, b in zip(*results))
    model, qs = _tiny(seed=8)
    with torch.no_grad():
        other = model(_frames(seed=1), qs).mask_logits
    assert not torch.equal(other[-1], results[0][-1])


def test_bf16_autocast_path_runs_on_cpu_and_tracks_fp32() -> None:
    model, qs = _tiny()
    frames = _frames(1, 2, 64, 64)
    with torch.no_grad():
        ref = model(frames, qs).mask_logits[-1]
        model.precision = "bf16"
        out = model(frames, qs).mask_logits[-1]
    assert out.dtype == torch.bfloat16 and ref.dtype == torch.float32
    assert torch.isfinite(out.float()).all()
    corr = torch.corrcoef(torch.stack([out.float().flatten(), ref.flatten()]))[0, 1]
    assert corr > 0.95, f"bf16 logits decorrelated from fp32 (r={corr:.3f})"


def test_num_parameters_sums_parts() -> None:
    model, _ = _tiny()
    counts = model.num_parameters()
    parts = counts["backbone"] + counts["neck"] + counts["decoder"] + counts["semantic_bank"]
    assert parts + sum(p.numel() for n, p in model.named_parameters() if n.startswith(("inst.", "bg."))) \
        == counts["total"]


def test_model_package_source_never_imports_tasks() -> None:
    pkg = Path(vidseg.model.__file__).parent
    for path in sorted(pkg.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n == "vidseg.tasks" or n.startswith("vidseg.tasks.") for n in names), path


@pytest.mark.slow  # a fresh interpreter importing torch + timm takes ~5-20 s on the shared CI machine
def test_importing_the_model_package_loads_no_task_module() -> None:
    pkg = Path(vidseg.model.__file__).parent
    modules = [f"vidseg.model.{p.stem}" for p in sorted(pkg.glob("*.py")) if p.stem != "__init__"]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.startswith('vidseg.tasks'))\n"
            "assert not bad, bad\nprint('ok', len(sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr


@pytest.mark.slow
def test_compile_switch_matches_eager_and_keeps_state_dict_keys() -> None:
    model, qs = _tiny()
    frames = _frames(1, 2, 64, 64)
    keys = list(model.state_dict())
    with torch.no_grad():
        ref = model(frames, qs).mask_logits[-1]
    model.compile_submodules()
    assert model.compiled and list(model.state_dict()) == keys
    with torch.no_grad():
        out = model(frames, qs).mask_logits[-1]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
