"""TemporalNeck, its space-time window attention and the sine position encodings (fp32, small sizes)."""

from __future__ import annotations

import math

import pytest
import torch

from vidseg.model.neck import NeckOutput, SpaceTimeWindowAttention, TemporalNeck
from vidseg.model.ops import window_partition
from vidseg.model.position import (
    PositionEmbeddingSine,
    PositionEmbeddingSine3D,
    sine_position_2d,
    sine_position_3d,
)

IN_CHANNELS = [8, 16, 24, 32]  # strides 4, 8, 16, 32


def _backbone_maps(n: int, h: int, w: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, h // s, w // s, generator=g) for c, s in zip(IN_CHANNELS, (4, 8, 16, 32))]


def _tiny_neck(**kwargs) -> TemporalNeck:
    opts = dict(d_model=64, num_layers=2, n_heads=4, n_points=2, ffn_dim=96)
    opts.update(kwargs)
    return TemporalNeck(IN_CHANNELS, **opts)


@pytest.mark.parametrize("frames", [1, 3])
def test_neck_output_shapes(frames):
    torch.manual_seed(0)
    neck = _tiny_neck()
    b, h, w = 2, 64, 128
    out = neck(_backbone_maps(b * frames, h, w), frames)
    assert isinstance(out, NeckOutput)
    assert [tuple(f.shape) for f in out.features] == [(b, frames, 64, h // s, w // s) for s in (32, 16, 8)]
    assert out.mask_features.shape == (b, frames, 64, h // 4, w // 4)
    assert out.strides == (32, 16, 8)
    assert all(f.is_contiguous() for f in out.features) and out.mask_features.is_contiguous()


def test_neck_mask_dim_and_input_checks():
    neck = _tiny_neck(mask_dim=32, num_layers=1)
    assert neck(_backbone_maps(2, 64, 64), 2).mask_features.shape == (1, 2, 32, 16, 16)
    with pytest.raises(ValueError, match="multiple of 64"):
        neck(_backbone_maps(1, 96, 64), 1)
    with pytest.raises(ValueError, match="not divisible by T=2"):
        neck(_backbone_maps(3, 64, 64), 2)
    with pytest.raises(ValueError, match="4 maps"):
        neck(_backbone_maps(1, 64, 64)[1:], 1)
    with pytest.raises(ValueError, match="multiple of 32"):
        TemporalNeck(IN_CHANNELS, d_model=48)


def test_every_neck_parameter_gets_a_gradient():
    torch.manual_seed(0)
    neck = _tiny_neck()
    # Deformable attention zero-initialises its offset/weight projections, so at init nothing flows back into
    # the queries' positional part (level_embed); a small perturbation stands for one optimiser step.
    with torch.no_grad():
        for layer in neck.layers:
            attn = layer.deformable.self_attn
            attn.sampling_offsets.weight.normal_(0, 0.01)
            attn.attention_weights.weight.normal_(0, 0.01)
    out = neck(_backbone_maps(4, 64, 64), 2)
    loss = sum(f.square().mean() for f in out.features) + out.mask_features.square().mean()
    loss.backward()
    missing = [n for n, p in neck.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_same_seed_same_outputs_and_different_seed_differs():
    def run(seed):
        torch.manual_seed(seed)
        neck = _tiny_neck()
        with torch.no_grad():
            return neck(_backbone_maps(3, 64, 64), 3)

    a, b, c = run(7), run(7), run(8)
    for x, y in zip(a.features + [a.mask_features], b.features + [b.mask_features]):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert not torch.allclose(a.mask_features, c.mask_features)


def test_window_attention_mixes_frames_only_when_enabled():
    maps = _backbone_maps(3, 64, 64, seed=1)
    changed = [m.clone() for m in maps]
    for m in changed:
        m[2] += 1.0  # change only the last frame
    for temporal in (False, True):
        torch.manual_seed(0)
        neck = _tiny_neck(temporal_window_attention=temporal).eval()
        with torch.no_grad():
            base, other = neck(maps, 3), neck(changed, 3)
            alone = neck([m[:1] for m in maps], 1)
        frame0_same = torch.allclose(base.mask_features[:, 0], other.mask_features[:, 0], atol=1e-6)
        assert frame0_same == (not temporal)
        if not temporal:  # per-frame Mask2Former: frame 0 of a clip == frame 0 run alone
            torch.testing.assert_close(base.features[2][:, 0], alone.features[2][:, 0], atol=1e-5, rtol=1e-5)


def test_neck_under_bf16_autocast_stays_close_to_fp32():
    torch.manual_seed(0)
    neck = _tiny_neck().eval()
    maps = _backbone_maps(2, 64, 64, seed=3)
    with torch.no_grad():
        want = neck(maps, 2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = neck(maps, 2)
    for a, b in zip(got.features + [got.mask_features], want.features + [want.mask_features]):
        assert torch.isfinite(a).all()
        assert ((a.float() - b).abs().max() / b.abs().max()).item() < 5e-2


def test_activation_checkpointing_matches_plain_forward_and_grads():
    maps = _backbone_maps(2, 64, 64, seed=2)
    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        neck = _tiny_neck(activation_checkpointing=ckpt).train()
        out = neck(maps, 2)
        (out.mask_features.square().mean() + out.features[0].mean()).backward()
        results.append((out.mask_features.detach(), [p.grad.clone() for p in neck.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for g0, g1 in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(g0, g1)


def _naive_window_layer(layer: SpaceTimeWindowAttention, levels, pos_levels, cells):
    """Per-window loop with explicit softmax. levels/pos_levels: [B, T, H_l, W_l, d] / [T, H_l, W_l, d]."""
    b, t = levels[0].shape[:2]
    d = levels[0].shape[-1]
    heads, hd = layer.n_heads, d // layer.n_heads
    nh, nw = levels[0].shape[2] // cells[0], levels[0].shape[3] // cells[0]
    outs = [torch.zeros_like(x) for x in levels]
    for bi in range(b):
        for wy in range(nh):
            for wx in range(nw):
                def cut(x, c, wy=wy, wx=wx):
                    return x[..., wy * c:(wy + 1) * c, wx * c:(wx + 1) * c, :]

                tok = torch.cat([cut(x[bi], c).reshape(-1, d) for x, c in zip(levels, cells)])
                pos = torch.cat([cut(p, c).reshape(-1, d) for p, c in zip(pos_levels, cells)])
                qk = (tok + pos) @ layer.qk_proj.weight.T + layer.qk_proj.bias
                q, k = qk[:, :d], qk[:, d:]
                v = tok @ layer.v_proj.weight.T + layer.v_proj.bias
                heads_out = []
                for hi in range(heads):
                    sl = slice(hi * hd, (hi + 1) * hd)
                    scores = q[:, sl] @ k[:, sl].T / math.sqrt(hd)
                    probs = scores.exp() / scores.exp().sum(-1, keepdim=True)
                    heads_out.append(probs @ v[:, sl])
                attn = torch.cat(heads_out, -1) @ layer.out_proj.weight.T + layer.out_proj.bias
                y = layer.ffn(layer.norm(tok + attn))
                start = 0
                for out, c in zip(outs, cells):
                    n_tok = t * c * c
                    cut(out[bi], c)[...] = y[start:start + n_tok].view(t, c, c, d)
                    start += n_tok
    return outs


def test_space_time_window_attention_equals_naive_per_window_attention():
    torch.manual_seed(0)
    d, t, b = 16, 2, 2
    cells = (2, 4, 8)
    shapes = [(4, 2), (8, 4), (16, 8)]  # a 128x64-pixel frame: 2 windows per frame
    layer = SpaceTimeWindowAttention(d, n_heads=2, ffn_dim=24, dropout=0.0).eval()
    levels = [torch.randn(b, t, h, w, d) for h, w in shapes]
    pos_levels = [torch.randn(t, h, w, d) for h, w in shapes]
    src = torch.cat([x.reshape(b * t, h * w, d) for x, (h, w) in zip(levels, shapes)], dim=1)
    pos_windows = torch.cat([window_partition(p[None], c) for p, c in zip(pos_levels, cells)], dim=1)
    with torch.no_grad():
        got = layer(src, pos_windows, t, shapes, cells)
        want = _naive_window_layer(layer, levels, pos_levels, cells)
    want_flat = torch.cat([x.reshape(b * t, h * w, d) for x, (h, w) in zip(want, shapes)], dim=1)
    assert pos_windows.shape == (2, t * 84, d)
    torch.testing.assert_close(got, want_flat, atol=1e-5, rtol=1e-5)


def test_sine_position_values_match_formula():
    h, w, c = 3, 5, 8
    pos = sine_position_2d(h, w, c)
    assert pos.shape == (1, c, h, w)
    y, x, k = 1, 3, 2  # channel k=2 of the y half: sin(y_norm / 10000^(2*1/4))
    y_norm = (y + 1) / (h + 1e-6) * 2 * math.pi
    x_norm = (x + 1) / (w + 1e-6) * 2 * math.pi
    assert pos[0, k, y, x].item() == pytest.approx(math.sin(y_norm / 10000 ** (2 / 4)), abs=1e-6)
    assert pos[0, 4 + 3, y, x].item() == pytest.approx(math.cos(x_norm / 10000 ** (2 / 4)), abs=1e-6)
    # 3D = 2D spatial part + a full-width temporal encoding identical at every pixel
    pos3d = sine_position_3d(4, h, w, c)
    assert pos3d.shape == (1, 4, c, h, w)
    temporal = pos3d - pos[:, None]
    torch.testing.assert_close(temporal, temporal[..., :1, :1].expand_as(temporal))
    t_norm = 3 / (4 + 1e-6) * 2 * math.pi  # frame index 2
    assert temporal[0, 2, 5, 0, 0].item() == pytest.approx(math.cos(t_norm / 10000 ** (4 / 8)), abs=1e-5)
    torch.testing.assert_close(sine_position_3d(4, h, w, c, channels_last=True), pos3d[0].permute(0, 2, 3, 1))
    # module forms broadcast over the batch
    assert PositionEmbeddingSine(4)(torch.zeros(2, 3, h, w)).shape == (2, 8, h, w)
    torch.testing.assert_close(PositionEmbeddingSine3D(4)(torch.zeros(2, 4, 1, h, w))[1], pos3d[0])


def test_stride2_mask_features_add_an_fpn_step_on_the_stride2_map():
    """mask_stride=2: the stride-2 map enters (changing it changes only the mask features), masks are H/2."""
    torch.manual_seed(0)
    neck = TemporalNeck([4, *IN_CHANNELS], d_model=64, num_layers=1, n_heads=4, n_points=2, ffn_dim=96,
                        mask_stride=2)
    g = torch.Generator().manual_seed(1)
    fine = torch.randn(2, 4, 32, 64, generator=g)
    maps = _backbone_maps(2, 64, 128)
    out = neck([fine, *maps], 2)
    assert out.mask_features.shape == (1, 2, 64, 32, 64)
    assert [tuple(f.shape[-2:]) for f in out.features] == [(2, 4), (4, 8), (8, 16)]
    other = neck([fine + 1.0, *maps], 2)
    assert all(torch.equal(a, b) for a, b in zip(out.features, other.features))
    assert not torch.allclose(out.mask_features, other.mask_features)
    out.mask_features.square().mean().backward()
    assert neck.fine_lateral_conv[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="5 maps"):
        neck(maps, 2)
    with pytest.raises(ValueError, match="stride-2/4/8/16/32 maps"):
        TemporalNeck(IN_CHANNELS, d_model=64, mask_stride=2)
    with pytest.raises(ValueError, match="mask_stride must be 4 or 2"):
        TemporalNeck(IN_CHANNELS, d_model=64, mask_stride=8)
    assert _tiny_neck().fine_lateral_conv is None  # TarViS layout: no extra parameters
