"""The VOS matching readout (ours): values against a per-pixel reference, reference frames, point objects,
gradients, and its place in the task's object logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from vidseg.data.records import Batch, ClipSample
from vidseg.tasks.vos import VOSTask
from vidseg.tasks.vos_matching import MatchingReadout, pooled_masks

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def _reference(m: MatchingReadout, feats: torch.Tensor, memory: torch.Tensor, masks: torch.Tensor,
               frames: list[int], is_point: list[bool]) -> torch.Tensor:
    """Straightforward per-pixel loops: softmax over the reference frame's pixels, clamped logit, times gain."""
    t, _, h, w = feats.shape
    n = masks.shape[0]
    out = torch.zeros(1 + n, t, h, w)
    mask_objs = [k for k in range(n) if not is_point[k]]
    first = min(frames[k] for k in mask_objs)
    for f in range(t):
        for y in range(h):
            for x in range(w):
                q = m.key(feats[f, :, y, x])
                for k in range(-1, n):
                    if k >= 0 and is_point[k]:
                        continue
                    r = first if k < 0 else frames[k]
                    keys = m.key(memory[r].flatten(1).t())
                    attn = torch.softmax(keys @ q / keys.shape[-1] ** 0.5, 0)
                    on_r = torch.stack([masks[j].flatten() for j in mask_objs if frames[j] == r])
                    value = (1 - on_r.sum(0)).clamp(min=0) if k < 0 else masks[k].flatten()
                    p = (attn * value).sum().clamp(m.clamp, 1 - m.clamp)
                    out[1 + k, f, y, x] = m.gain * torch.log(p / (1 - p))
    return out


def test_readout_equals_a_per_pixel_reference_with_objects_on_two_reference_frames() -> None:
    torch.manual_seed(0)
    m = MatchingReadout(8, key_dim=4, gain=0.7)
    feats, memory = torch.randn(3, 8, 4, 4), torch.randn(3, 8, 2, 2)
    masks = torch.zeros(3, 2, 2)
    masks[0, 0, 0], masks[0, 0, 1] = 1.0, 0.5  # object 0 on frame 0
    masks[1, 1, 1] = 1.0  # object 1 prompted on frame 2
    masks[2, 1, 0] = 1.0  # object 2 is a point object: no readout
    frames, is_point = [0, 2, 0], [False, False, True]
    with torch.no_grad():
        got = m(feats, memory, masks, torch.tensor(frames), is_point)
        want = _reference(m, feats, memory, masks, frames, is_point)
    assert got.shape == (4, 3, 4, 4)
    assert torch.equal(got[3], torch.zeros(3, 4, 4))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_pixel_like_an_object_reads_that_object() -> None:
    """Orthogonal features and an identity key: a query pixel equal to object k's reference pixel gets a positive
    logit for k and negative ones for the other object and the background."""
    d = 4
    m = MatchingReadout(d, key_dim=d, gain=1.0)
    with torch.no_grad():
        m.key.weight.copy_(torch.eye(d) * 20)
        m.key.bias.zero_()
    memory = torch.eye(d).view(d, 2, 2)[None]  # [1, d, 2, 2]: pixel j has feature e_j
    masks = torch.zeros(2, 2, 2)
    masks[0, 0, 0], masks[1, 1, 1] = 1.0, 1.0  # objects on pixels 0 and 3; pixels 1 and 2 background
    feats = torch.stack([torch.eye(d)[0], torch.eye(d)[3], torch.eye(d)[1]], -1).view(1, d, 1, 3)
    with torch.no_grad():
        out = m(feats, memory, masks, torch.tensor([0, 0]), [False, False])[:, 0, 0]  # [1 + N, 3 pixels]
    assert out.argmax(0).tolist() == [1, 2, 0]
    assert (out.max(0).values > 0).all() and (out.min(0).values < 0).all()


def test_readout_trains_its_keys_and_the_features() -> None:
    torch.manual_seed(1)
    m = MatchingReadout(8)
    feats = torch.randn(2, 8, 4, 4, requires_grad=True)
    masks = pooled_masks(torch.rand(1, 4, 4) > 0.5, 2)
    assert masks.shape == (1, 2, 2) and masks.max() <= 1
    out = m(feats, torch.nn.functional.avg_pool2d(feats, 2), masks, torch.tensor([0]), [False])
    out[1].sum().backward()
    assert m.key.weight.grad.abs().sum() > 0 and feats.grad.abs().sum() > 0 and m.gain.grad is not None


def test_readout_rejects_a_clamp_outside_its_range_and_an_empty_key() -> None:
    with pytest.raises(ValueError, match="clamp"):
        MatchingReadout(8, clamp=0.5)
    with pytest.raises(ValueError, match="matching_dim"):
        MatchingReadout(8, key_dim=0)


def test_vos_task_adds_the_readout_to_its_object_logits() -> None:
    """task=vos (the tiny recipe turns matching on): the queries carry a readout [B, 1+N, T, h, w] and the
    object logits are the query logits plus it."""
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=["task=vos"])
    assert cfg.tasks.vos.matching
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    task = VOSTask(queries_per_object=2, background_grid=2, encoder_layers=1, encoder_ffn=32, encoder_heads=4,
                   pixels_per_query=16, point_prob=0.0, num_points=None, token_pool=2, matching=True)
    task.setup(model, {})
    t, size, n = 2, 64, 2
    masks = torch.zeros(n, t, size, size, dtype=torch.bool)
    masks[0, :, 8:24, 8:24] = True
    masks[1, :, 40:56, 30:50] = True
    sample = ClipSample(frames=torch.randint(0, 255, (t, 3, size, size), dtype=torch.uint8), masks=masks,
                        track_ids=torch.arange(1, n + 1), class_ids=torch.full((n,), -1),
                        pad_mask=torch.ones(size, size, dtype=torch.bool),
                        prompt_frames=torch.zeros(n, dtype=torch.long), dataset="d")
    batch = Batch("vos", "d", sample.frames[None], torch.ones(1, size, size, dtype=torch.bool), [sample])
    feats = model.encode(batch.frames)
    qs = task.init_queries(model, feats, batch)
    side = size // model.mask_stride
    assert qs.readout.shape == (1, 1 + n, t, side, side)
    out = model.decode(feats, qs)
    plain = task.object_logits(out, -1, qs.owners, n)
    torch.testing.assert_close(task.object_logits(out, -1, qs.owners, n, qs.readout), plain + qs.readout)
    sum(task.loss(model, feats, qs, out, batch).values()).backward()
    assert task.readout.key.weight.grad.abs().sum() > 0
