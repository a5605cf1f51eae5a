"""ops.py against independent, explicitly written references (fp32, small sizes)."""

from __future__ import annotations

import math

import pytest
import torch

from vidseg.model.ops import (
    MSDeformAttn,
    ms_deform_attn,
    point_sample,
    uncertain_point_coords,
    window_merge,
    window_partition,
)


def _bilinear_zero_pad(image: torch.Tensor, x_norm: float, y_norm: float) -> torch.Tensor:
    """Naive bilinear sample of image [C, H, W] at normalised (x, y) in [0, 1], align_corners=False, zeros
    outside the map: pixel i covers [i, i+1) in pixel units, its centre is at i + 0.5."""
    _, h, w = image.shape
    px = x_norm * w - 0.5
    py = y_norm * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    fx, fy = px - x0, py - y0
    out = torch.zeros(image.shape[0], dtype=torch.float64)
    for yy, xx, wgt in ((y0, x0, (1 - fx) * (1 - fy)), (y0, x0 + 1, fx * (1 - fy)),
                        (y0 + 1, x0, (1 - fx) * fy), (y0 + 1, x0 + 1, fx * fy)):
        if 0 <= yy < h and 0 <= xx < w:
            out += wgt * image[:, yy, xx].double()
    return out


def _naive_ms_deform_attn(value, shapes, locations, weights):
    n, _, heads, head_dim = value.shape
    _, q, _, levels, points, _ = locations.shape
    out = torch.zeros(n, q, heads, head_dim, dtype=torch.float64)
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)
    for b in range(n):
        for qi in range(q):
            for m in range(heads):
                for lvl, ((h, w), start) in enumerate(zip(shapes, starts)):
                    image = value[b, start:start + h * w, m].T.reshape(head_dim, h, w)
                    for p in range(points):
                        x, y = locations[b, qi, m, lvl, p].tolist()
                        out[b, qi, m] += weights[b, qi, m, lvl, p].double() * _bilinear_zero_pad(image, x, y)
    return out.reshape(n, q, heads * head_dim)


def test_ms_deform_attn_matches_naive_loop_reference():
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (2, 3), (5, 2)]
    n, q, heads, head_dim, points = 2, 5, 2, 3, 2
    s = sum(h * w for h, w in shapes)
    value = torch.randn(n, s, heads, head_dim, generator=g)
    # include locations outside the map (zero padding) and on the edges
    locations = torch.rand(n, q, heads, len(shapes), points, 2, generator=g) * 1.4 - 0.2
    locations[0, 0, 0, 0, 0] = torch.tensor([0.0, 1.0])
    weights = torch.rand(n, q, heads, len(shapes), points, generator=g)
    got = ms_deform_attn(value, torch.tensor(shapes), None, locations, weights)
    want = _naive_ms_deform_attn(value, shapes, locations, weights)
    assert got.shape == (n, q, heads * head_dim)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    # list inputs and an explicit level_start_index give the same answer
    got_list = ms_deform_attn(value, shapes, [0, 12, 18], locations, weights)
    torch.testing.assert_close(got_list, got)


def test_ms_deform_attn_rejects_inconsistent_shapes():
    value = torch.zeros(1, 10, 1, 2)
    locations = torch.zeros(1, 1, 1, 1, 1, 2)
    with pytest.raises(ValueError, match="sum to 12"):
        ms_deform_attn(value, [(3, 4)], None, locations, torch.ones(1, 1, 1, 1, 1))
    with pytest.raises(ValueError, match="2 spatial shapes but 1 levels"):
        ms_deform_attn(value, [(2, 3), (2, 2)], None, locations, torch.ones(1, 1, 1, 1, 1))


def test_msdeformattn_offsets_are_in_pixels_of_each_level():
    """Identity projections, one head/point, offset bias = +1 px in x: on a ramp map whose value is the pixel
    x coordinate, each level returns (reference x in pixels) + 1; uniform weights average the levels."""
    shapes = [(4, 8), (2, 4)]
    attn = MSDeformAttn(d_model=1, n_levels=2, n_heads=1, n_points=1)
    with torch.no_grad():
        for lin in (attn.value_proj, attn.output_proj):
            lin.weight.fill_(1.0)
            lin.bias.zero_()
        attn.sampling_offsets.bias.copy_(torch.tensor([1.0, 0.0, 1.0, 0.0]))
    ramp = torch.cat([torch.arange(w, dtype=torch.float32).repeat(h) for h, w in shapes])  # x index per pixel
    ref_xy = torch.tensor([[0.3, 0.5], [0.45, 0.4]])  # two queries
    reference_points = ref_xy[None, :, None, :].expand(1, 2, 2, 2)
    out = attn(torch.randn(1, 2, 1), reference_points, ramp[None, :, None], torch.tensor(shapes))
    expected = torch.tensor([sum(x * w - 0.5 + 1.0 for _, w in shapes) / 2 for x in ref_xy[:, 0].tolist()])
    torch.testing.assert_close(out[0, :, 0], expected.float(), atol=1e-5, rtol=0)


def test_msdeformattn_standard_init_and_gradients():
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    assert torch.count_nonzero(attn.sampling_offsets.weight) == 0
    assert torch.count_nonzero(attn.attention_weights.weight) == 0
    bias = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    # head 0 points along +x, head 1 (90 deg) along +y; point p sits p+1 pixels out on every level
    torch.testing.assert_close(bias[0, :, :, 0], torch.tensor([[1.0, 2.0, 3.0]] * 2))
    torch.testing.assert_close(bias[1, 1, :, 1], torch.tensor([1.0, 2.0, 3.0]))
    shapes = [(4, 4), (2, 2)]
    x = torch.randn(2, 20, 16, requires_grad=True)
    ref = torch.rand(2, 20, 2, 2)
    out = attn(x, ref, x, shapes)
    assert out.shape == (2, 20, 16)
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_msdeformattn_padding_mask_zeroes_values():
    attn = MSDeformAttn(d_model=8, n_levels=1, n_heads=2, n_points=2)
    x = torch.randn(1, 16, 8)
    ref = torch.rand(1, 16, 1, 2)
    mask = torch.ones(1, 16, dtype=torch.bool)
    out = attn(x, ref, x, [(4, 4)], input_padding_mask=mask)
    # every value masked -> the attention sum is 0 and only the output bias remains
    torch.testing.assert_close(out, attn.output_proj.bias.expand(1, 16, 8).detach())


def test_point_sample_matches_manual_bilinear():
    g = torch.Generator().manual_seed(1)
    image = torch.randn(2, 3, 5, 7, generator=g)
    coords = torch.tensor([[[0.5, 0.5], [0.0, 0.0], [0.93, 0.11]], [[0.2, 0.8], [1.0, 0.5], [0.33, 0.66]]])
    got = point_sample(image, coords)
    assert got.shape == (2, 3, 3)
    for b in range(2):
        for p in range(3):
            x, y = coords[b, p].tolist()
            torch.testing.assert_close(got[b, :, p].double(), _bilinear_zero_pad(image[b], x, y), atol=1e-6,
                                       rtol=0)
    # at a pixel centre it returns the pixel exactly; grid-shaped coords keep their shape
    centre = torch.tensor([[[[(2 + 0.5) / 7, (3 + 0.5) / 5]]]]).expand(2, 1, 1, 2)
    torch.testing.assert_close(point_sample(image, centre)[:, :, 0, 0], image[:, :, 3, 2])


def test_uncertain_point_coords_picks_most_uncertain_points():
    # logits confident (+8) everywhere except the left quarter (logit 0 = maximally uncertain)
    w = h = 16
    logits = torch.full((3, 1, h, w), 8.0)
    logits[..., : w // 4] = 0.0
    g = torch.Generator().manual_seed(0)

    def uncertainty(x):
        return -x.abs()

    coords = uncertain_point_coords(logits, uncertainty, num_points=50, oversample_ratio=10,
                                    importance_ratio=1.0, generator=g)
    assert coords.shape == (3, 50, 2)
    # only points whose bilinear sample is exactly 0 (x <= 3.5 px centre) are chosen
    assert (coords[..., 0] <= (w // 4 - 0.5) / w + 1e-6).all()
    mixed = uncertain_point_coords(logits, uncertainty, num_points=40, oversample_ratio=10,
                                   importance_ratio=0.75, generator=g)
    assert mixed.shape == (3, 40, 2)
    assert (mixed[:, :30, 0] <= (w // 4 - 0.5) / w + 1e-6).all()
    assert ((mixed >= 0) & (mixed <= 1)).all()
    # the 10 uniform points are not restricted to the uncertain region (prob. of all 30 in it ~ 1e-18)
    assert (mixed[:, 30:, 0] > 0.25).any()


def test_uncertain_point_coords_is_deterministic_with_generator_and_checks_shape():
    logits = torch.randn(2, 1, 8, 8)
    a = uncertain_point_coords(logits, lambda x: -x.abs(), 20, generator=torch.Generator().manual_seed(3))
    b = uncertain_point_coords(logits, lambda x: -x.abs(), 20, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match=r"\[N, 1, P\]"):
        uncertain_point_coords(torch.randn(2, 3, 8, 8), lambda x: -x.abs(), 20)  # 3 channels in, 3 out


def test_window_partition_layout_and_round_trip():
    b, t, h, w, c, win = 2, 3, 4, 6, 5, 2
    x = torch.randn(b, t, h, w, c)
    windows = window_partition(x, win)
    assert windows.shape == (b * (h // win) * (w // win), t * win * win, c)
    nh, nw = h // win, w // win
    for bi in range(b):
        for wy in range(nh):
            for wx in range(nw):
                expected = x[bi, :, wy * win:(wy + 1) * win, wx * win:(wx + 1) * win].reshape(-1, c)  # (t, y, x)
                torch.testing.assert_close(windows[(bi * nh + wy) * nw + wx], expected, rtol=0, atol=0)
    torch.testing.assert_close(window_merge(windows, win, b, t, h, w), x, rtol=0, atol=0)


def test_window_ops_reject_bad_sizes():
    with pytest.raises(ValueError, match="not divisible by window 4"):
        window_partition(torch.zeros(1, 1, 6, 8, 2), 4)
    with pytest.raises(ValueError, match="expected leading dims"):
        window_merge(torch.zeros(3, 4, 2), 2, 1, 1, 4, 4)


def test_msdeformattn_samples_in_fp32_under_autocast():
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2)
    with torch.no_grad():
        attn.sampling_offsets.weight.normal_(0, 0.1)
    seen = []
    attn.sampling_offsets.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    x = torch.randn(1, 20, 16)
    ref = torch.rand(1, 20, 2, 2)
    want = attn(x, ref, x, [(4, 4), (2, 2)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = attn(x, ref, x, [(4, 4), (2, 2)])
    assert seen == [torch.float32, torch.float32]  # offsets computed in fp32 in both runs
    assert got.dtype == torch.bfloat16  # the projections follow autocast
    torch.testing.assert_close(got.float(), want, atol=5e-2, rtol=5e-2)
