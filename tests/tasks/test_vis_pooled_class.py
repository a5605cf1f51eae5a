"""VIS `pooled_class` (ours): mask-pooled features added to the instance queries' class embeddings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vidseg.data.records import Category
from vidseg.model.decoder import classify
from vidseg.tasks.vis import VISTask, mask_pooled_features

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"


def test_mask_pooled_features_average_under_the_soft_mask() -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(1, 2, 5, 4, 4, generator=g)  # [B, T, d, h, w]
    logits = torch.full((1, 2, 2, 4, 4), -50.0)  # [B, Q, T, h, w]
    logits[0, 0, 0, :2, :2] = 50.0  # query 0: a 2x2 block of frame 0
    logits[0, 1, :, 3, :] = 50.0  # query 1: the last row of both frames
    pooled = mask_pooled_features(feats.requires_grad_(), logits.requires_grad_())
    assert pooled.shape == (1, 2, 5)
    torch.testing.assert_close(pooled[0, 0], feats[0, 0, :, :2, :2].mean(dim=(1, 2)), atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled[0, 1], feats[0, :, :, 3, :].permute(1, 0, 2).reshape(5, -1).mean(1),
                               atol=1e-5, rtol=0)
    pooled.sum().backward()
    assert logits.grad is None  # the masks are detached: the class loss does not move them
    assert feats.grad is not None and feats.grad.abs().sum() > 0


def _setup(pooled: bool) -> tuple[VISTask, object, object]:
    torch.manual_seed(0)
    model = instantiate(OmegaConf.load(CONF / "tarvis_tiny.yaml"))
    task = VISTask(num_queries=4, pooled_class=pooled)
    task.setup(model, {"ds": [Category(i + 1, f"c{i}") for i in range(3)]})
    frames = torch.randint(0, 256, (2, 2, 3, 64, 64), dtype=torch.uint8)
    feats = model.encode(frames)
    out = model.decode(feats, task.query_set(model, "ds", feats))
    return task, feats, out


def test_pooled_class_starts_as_tarvis_and_adds_the_projected_pooled_features() -> None:
    task, feats, out = _setup(pooled=True)
    inst, bg, sem = (out.group(n, -1) for n in ("instance", "background", "semantic"))
    plain = classify(inst.embeddings, sem.embeddings, bg.embeddings)
    torch.testing.assert_close(task.class_logits(out, -1, feats), plain)  # zero-initialised projection
    with torch.no_grad():
        task.class_pool.weight.copy_(torch.eye(task.class_pool.in_features))
    pooled = mask_pooled_features(feats.mask_features, inst.mask_logits)
    expected = classify(inst.embeddings + pooled, sem.embeddings, bg.embeddings)
    torch.testing.assert_close(task.class_logits(out, -1, feats), expected)
    assert not torch.allclose(expected, plain)
    with pytest.raises(ValueError, match="pooled_class needs the encoded features"):
        task.class_logits(out, -1)
    plain_task, plain_feats, plain_out = _setup(pooled=False)
    assert plain_task.class_pool is None and "class_pool.weight" not in dict(plain_task.named_parameters())
