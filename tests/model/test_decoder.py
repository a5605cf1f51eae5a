"""Masked-attention decoder: masks vs an explicit reference, shapes, classification, hooks, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vidseg.model.decoder import (
    DecoderLayer,
    MaskedAttentionDecoder,
    _Attention,
    attention_mask_from_logits,
    classify,
)
from vidseg.model.queries import LearnedQueries, QuerySet, SemanticQueryBank

D, HEADS, B, T = 32, 4, 2, 2
IMG = 64  # stride-32/16/8/4 maps of 2, 4, 8, 16 cells


def _feats(seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(B, T, D, IMG // s, IMG // s, generator=g) for s in (32, 16, 8)]
    return feats, torch.randn(B, T, D, IMG // 4, IMG // 4, generator=g)


def _setup(seed: int = 0, layers: int = 3) -> tuple[MaskedAttentionDecoder, QuerySet]:
    torch.manual_seed(seed)
    dec = MaskedAttentionDecoder(D, HEADS, 64, layers, groups=["instance", "background", "semantic"])
    inst, bg, bank = LearnedQueries(D, 5), LearnedQueries(D, 2), SemanticQueryBank(D, {"v": 3})
    return dec, QuerySet([inst.group("instance"), bg.group("background"), bank.group("v")])


def _reference_attention(attn: _Attention, q_in, k_in, v_in, keep) -> torch.Tensor:
    """Explicit per-head masked softmax (no SDPA): softmax(QK^T/sqrt(dh) with -inf outside ``keep``) V."""
    b, lq, d = q_in.shape
    dh = d // attn.n_heads
    q = attn.q_proj(q_in).view(b, lq, attn.n_heads, dh)
    k = attn.k_proj(k_in).view(b, -1, attn.n_heads, dh)
    v = attn.v_proj(v_in).view(b, -1, attn.n_heads, dh)
    scores = torch.einsum("bqhc,bkhc->bhqk", q, k) / math.sqrt(dh)
    scores = scores.masked_fill(~keep, float("-inf"))
    out = torch.einsum("bhqk,bkhc->bqhc", scores.softmax(dim=-1), v).reshape(b, lq, d)
    return attn.out_proj(out)


def test_attention_mask_matches_trilinear_sigmoid_reference() -> None:
    torch.manual_seed(0)
    logits = torch.randn(B, 4, T, 16, 16) * 3
    logits[0, 1] = -5.0  # empty mask -> attends everywhere
    keep = attention_mask_from_logits(logits, (8, 8))
    ref = F.interpolate(logits, size=(T, 8, 8), mode="trilinear", align_corners=False).sigmoid() >= 0.5
    ref = ref.flatten(2)
    ref[ref.sum(-1) == 0] = True
    assert keep.shape == (B, 1, 4, T * 64) and keep.dtype == torch.bool
    assert torch.equal(keep[:, 0], ref)
    assert keep[0, 0, 1].all()
    assert not keep[:, 0].all(), "random logits should mask some tokens"


def test_masked_cross_attention_equals_explicit_masked_softmax() -> None:
    torch.manual_seed(0)
    attn = _Attention(D, HEADS)
    q, kv = torch.randn(B, 6, D), torch.randn(B, 40, D)
    keep = torch.rand(B, 1, 6, 40) > 0.6
    keep[1, 0, 2] = False
    keep |= ~keep.any(-1, keepdim=True)  # the decoder's rule for empty masks
    out = attn(q, kv + 1.0, kv, keep)
    ref = _reference_attention(attn, q, kv + 1.0, kv, keep)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # a query whose mask was empty gets exactly the unmasked result
    unmasked = attn(q, kv + 1.0, kv, None)
    torch.testing.assert_close(out[1, 2], unmasked[1, 2], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out[0], unmasked[0], atol=1e-4)


def test_decoder_uses_previous_prediction_as_attention_mask() -> None:
    dec, qs = _setup()
    feats, mf = _feats()
    captured: list[torch.Tensor | None] = []
    hooks = [
        layer.cross_attn.register_forward_hook(lambda m, args, out: captured.append(args[3]))
        for layer in dec.layers
    ]
    with torch.no_grad():
        out = dec(feats, mf, qs)
    for h in hooks:
        h.remove()
    assert len(captured) == 3
    for i, mask in enumerate(captured):
        size = tuple(feats[i % 3].shape[-2:])
        prev = out.mask_logits[i]
        ref = F.interpolate(prev, size=(T, *size), mode="trilinear", align_corners=False).sigmoid() >= 0.5
        ref = ref.flatten(2)
        ref[ref.sum(-1) == 0] = True
        assert mask is not None and torch.equal(mask[:, 0], ref), f"layer {i}"


def test_decoder_layer_cross_attention_step_matches_reference() -> None:
    torch.manual_seed(0)
    layer = DecoderLayer(D, HEADS, 64)
    x, qpos = torch.randn(B, 5, D), torch.randn(1, 5, D)
    mem, mpos = torch.randn(B, 30, D), torch.randn(1, 30, D)
    keep = torch.rand(B, 1, 5, 30) > 0.5
    keep |= ~keep.any(-1, keepdim=True)
    seen = {}
    layer.self_attn.register_forward_hook(lambda m, args, out: seen.setdefault("x", args[2]))
    layer(x, qpos, qpos, mem, mem + mpos, keep)
    expected = layer.cross_norm(x + _reference_attention(layer.cross_attn, x + qpos, mem + mpos, mem, keep))
    torch.testing.assert_close(seen["x"], expected, rtol=1e-5, atol=1e-5)


def test_decoder_output_shapes_and_group_access() -> None:
    dec, qs = _setup(layers=4)
    feats, mf = _feats()
    out = dec(feats, mf, qs)
    assert out.num_predictions == 5
    for logits, q, e in zip(out.mask_logits, out.queries, out.embeddings):
        assert logits.shape == (B, 10, T, 16, 16)
        assert q.shape == e.shape == (B, 10, D)
    sem = out.group("semantic", layer=2)
    assert sem.mask_logits.shape == (B, 3, T, 16, 16)
    assert torch.equal(sem.mask_logits, out.mask_logits[2][:, 7:])
    assert list(out.groups()) == ["instance", "background", "semantic"]
    assert len(out.group_all_layers("background")) == 5
    # queries are LayerNorm-ed: zero mean, unit variance per query
    torch.testing.assert_close(out.queries[-1].mean(-1), torch.zeros(B, 10), atol=1e-5, rtol=0)
    with pytest.raises(KeyError, match="no query group 'vos'"):
        out.group("vos")


def test_decoder_rejects_bad_inputs() -> None:
    dec, qs = _setup()
    feats, mf = _feats()
    with pytest.raises(ValueError, match="3 feature scales"):
        dec(feats[:2], mf, qs)
    with pytest.raises(ValueError, match="feature scale 1 has shape"):
        dec([feats[0], feats[1][:, :1], feats[2]], mf, qs)
    with pytest.raises(KeyError, match="no mask heads"):
        dec(feats, mf, QuerySet([LearnedQueries(D, 2).group("vos")]))
    with pytest.raises(KeyError, match="query_adders"):
        dec(feats, mf, qs, query_adders={"vos": lambda m: m})
    with pytest.raises(ValueError, match="channels"):
        dec(feats, mf[:, :, :16], qs)


def test_classify_no_object_is_max_over_background() -> None:
    torch.manual_seed(0)
    inst, sem, bg = torch.randn(2, 4, D), torch.randn(2, 6, D), torch.randn(2, 3, D)
    logits = classify(inst, sem, bg)
    assert logits.shape == (2, 4, 7)
    for b in range(2):
        for i in range(4):
            assert torch.isclose(logits[b, i, 0], max(inst[b, i] @ bg[b, j] for j in range(3)))
            for c in range(6):
                assert torch.isclose(logits[b, i, 1 + c], inst[b, i] @ sem[b, c])
    # unbatched semantic/background embeddings broadcast over the batch
    torch.testing.assert_close(classify(inst, sem[0], bg[0])[0], logits[0])
    with pytest.raises(ValueError, match="background"):
        classify(inst, sem, bg[:, :0])


def test_query_adders_default_is_bit_identical_and_hook_changes_only_via_self_attention() -> None:
    dec, qs = _setup()
    feats, mf = _feats()
    with torch.no_grad():
        base = dec(feats, mf, qs)
        empty = dec(feats, mf, qs, query_adders={})
        zero = dec(feats, mf, qs, query_adders={"instance": lambda m: torch.zeros(m.shape[0], m.shape[1], D)})
    for a, b, c in zip(base.mask_logits, empty.mask_logits, zero.mask_logits):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, rtol=0, atol=1e-6)
    shapes = []

    def adder(prev_logits: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(prev_logits.shape))
        return prev_logits.flatten(2).mean(-1, keepdim=True).expand(-1, -1, D) * 10

    with torch.no_grad():
        hooked = dec(feats, mf, qs, query_adders={"instance": adder})
    assert shapes == [(B, 5, T, 16, 16)] * 3
    # the same hook carried by the query set
    with torch.no_grad():
        carried = dec(feats, mf, QuerySet(list(qs), query_adders={"instance": adder}))
    assert all(torch.equal(a, b) for a, b in zip(carried.mask_logits, hooked.mask_logits))
    assert torch.equal(hooked.mask_logits[0], base.mask_logits[0])
    assert not torch.allclose(hooked.mask_logits[-1], base.mask_logits[-1])


def test_every_used_parameter_gets_a_gradient_and_unused_heads_do_not() -> None:
    dec, qs = _setup()
    dec.add_group("vos")  # heads of a group absent from the query set stay unused
    feats, mf = _feats()
    feats = [f.requires_grad_() for f in feats]
    out = dec(feats, mf, qs)
    inst, bg, sem = out.group("instance"), out.group("background"), out.group("semantic")
    loss = (
        sum(m.sigmoid().mean() for m in out.mask_logits)
        + classify(inst.embeddings, sem.embeddings, bg.embeddings).logsumexp(-1).mean()
    )
    loss.backward()
    for name, p in dec.named_parameters():
        if ".vos." in name:
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)


def test_same_seed_gives_identical_outputs() -> None:
    outs = []
    for _ in range(2):
        dec, qs = _setup(seed=3)
        feats, mf = _feats(seed=1)
        with torch.no_grad():
            outs.append(dec(feats, mf, qs).mask_logits)
    assert all(torch.equal(a, b) for a, b in zip(*outs))


def test_per_batch_query_content() -> None:
    dec, _ = _setup()
    dec.add_group("vos")
    init = torch.randn(B, 4, D)
    vos = LearnedQueries(D, None)
    qs = QuerySet([vos.group("vos", content=init)])
    feats, mf = _feats()
    out = dec(feats, mf, qs)
    assert out.mask_logits[-1].shape == (B, 4, T, 16, 16)
    # clip 1 alone gives the same result as inside the batch (queries are per clip)
    qs1 = QuerySet([vos.group("vos", content=init[1:])])
    with torch.no_grad():
        single = dec([f[1:] for f in feats], mf[1:], qs1)
    torch.testing.assert_close(
        single.mask_logits[-1][0], out.mask_logits[-1][1].detach(), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize(
    ("src", "dst"), [((16, 16), (8, 8)), ((16, 32), (4, 8)), ((32, 16), (4, 2)), ((12, 12), (5, 5))]
)
def test_strided_downsample_equals_bilinear_interpolation(src: tuple[int, int], dst: tuple[int, int]) -> None:
    from vidseg.model.decoder import _downsample_logits

    x = torch.randn(2, 5, *src)
    ref = F.interpolate(x, size=dst, mode="bilinear", align_corners=False)
    torch.testing.assert_close(_downsample_logits(x, dst), ref, rtol=1e-6, atol=1e-6)
