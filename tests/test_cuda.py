"""The GPU paths: the tiny model on CUDA (fp32 equal to the CPU, bf16 close to fp32, finite bf16 gradients),
fused AdamW chosen for CUDA parameters, and `trainer=gpu` (bf16-mixed, DDP over NCCL) training and validating
every task's metric. They need a CUDA device and are skipped without one (CI has none); the closing notes say
where they last ran."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vidseg.model.queries import LearnedQueries, QuerySet
from vidseg.module import _use_fused
from vidseg.utils.launch import run_train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CONF = Path(__file__).resolve().parents[1] / "conf" / "model"


def _tiny(device: str) -> tuple[torch.nn.Module, QuerySet]:
    torch.manual_seed(0)
    model = instantiate(OmegaConf.load(CONF / "tarvis_tiny.yaml"), vocabularies={"ytvis": 4},
                        groups=["instance", "background"])
    model.inst, model.bg = LearnedQueries(model.d_model, 6), LearnedQueries(model.d_model, 1)
    model = model.to(device)
    return model, QuerySet([model.inst.group("instance"), model.bg.group("background"),
                            model.semantic_bank.group("ytvis")])


def _frames() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 3, 3, 64, 128), generator=g, dtype=torch.uint8)


def test_cuda_fp32_matches_cpu_and_bf16_tracks_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # restored after the test
    cpu_model, cpu_qs = _tiny("cpu")
    gpu_model, gpu_qs = _tiny("cuda")
    gpu_model.load_state_dict(cpu_model.state_dict())
    frames = _frames()
    with torch.no_grad():
        ref = cpu_model(frames, cpu_qs).mask_logits[-1]
        out = gpu_model(frames.cuda(), gpu_qs).mask_logits[-1]
        assert out.device.type == "cuda" and out.dtype == torch.float32
        torch.testing.assert_close(out.cpu(), ref, rtol=1e-3, atol=1e-3)
        gpu_model.precision = "bf16"
        low = gpu_model(frames.cuda(), gpu_qs).mask_logits[-1]
    assert low.dtype == torch.bfloat16
    corr = torch.corrcoef(torch.stack([low.float().flatten().cpu(), ref.flatten()]))[0, 1]
    assert corr > 0.95, f"CUDA bf16 logits decorrelated from fp32 (r={corr:.3f})"
    out = gpu_model(frames.cuda(), gpu_qs)
    out.mask_logits[-1].float().square().mean().backward()
    grads = [p.grad for p in gpu_model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(g.dtype == torch.float32 for g in grads)  # autocast keeps the master weights and grads fp32


def test_fused_adamw_is_chosen_for_cuda_parameters() -> None:
    params = [torch.nn.Parameter(torch.zeros(3, device="cuda"))]
    assert _use_fused("auto", params) is True
    opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
    params[0].grad = torch.ones(3, device="cuda")
    opt.step()
    assert torch.all(params[0] < 0)


@pytest.mark.slow
def test_gpu_trainer_trains_and_syncs_every_metric_over_nccl(tmp_path: Path) -> None:
    """`trainer=gpu` is bf16-mixed DDP: the metric states (CPU) sync over the module's gloo group, not NCCL."""
    run = tmp_path / "run"
    run_train(["task=multi", "trainer=gpu", "logger=csv", "print_config=false", "data.batch_size=1",
               "trainer.max_steps=10", "data.max_val_videos=2", f"hydra.run.dir={run}"],
              timeout=900, log=tmp_path / "train.log")
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"vis", "vss", "vps", "vos", "pet"} <= set(metrics), sorted(metrics)
    assert 0.0 <= metrics["vos"]["J&F-Mean"] <= 1.0 and 0.0 <= metrics["vss"]["mIoU"] <= 1.0
