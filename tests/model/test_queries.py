"""QueryGroup / QuerySet bookkeeping, learned queries and the keyed semantic query bank."""

from __future__ import annotations

import pytest
import torch

from vidseg.model.queries import LearnedQueries, QueryGroup, QuerySet, SemanticQueryBank

D = 8


def _group(name: str, n: int, batch: int | None = None) -> QueryGroup:
    shape = (n, D) if batch is None else (batch, n, D)
    return QueryGroup(name, torch.randn(*shape), torch.randn(D))


def test_query_set_slices_ids_and_split_round_trip() -> None:
    qs = QuerySet([_group("instance", 3), _group("background", 1), _group("semantic", 4)])
    assert qs.names == ["instance", "background", "semantic"]
    assert qs.num_queries == 8
    assert qs.slices == {"instance": slice(0, 3), "background": slice(3, 4), "semantic": slice(4, 8)}
    assert qs.group_ids().tolist() == [0, 0, 0, 1, 2, 2, 2, 2]
    x = torch.arange(2 * 8 * 5, dtype=torch.float32).view(2, 8, 5)
    parts = qs.split(x)
    assert list(parts) == qs.names
    assert torch.equal(parts["background"], x[:, 3:4])
    assert torch.equal(torch.cat(list(parts.values()), dim=1), x)
    # split along another dim (e.g. [B, L, Q, ...])
    y = torch.randn(2, 3, 8)
    assert torch.equal(qs.split(y, dim=2)["semantic"], y[:, :, 4:])
    with pytest.raises(ValueError, match="expected 8 queries"):
        qs.split(torch.randn(2, 7, 5))


def test_query_set_content_and_type_embed_layout() -> None:
    shared, per_clip = _group("a", 2), _group("b", 3, batch=4)
    qs = QuerySet([shared, per_clip])
    content = qs.content(4)
    assert content.shape == (4, 5, D)
    for b in range(4):
        assert torch.equal(content[b, :2], shared.content)
        assert torch.equal(content[b, 2:], per_clip.content[b])
    pos = qs.type_embed()
    assert pos.shape == (5, D)
    assert torch.equal(pos[0], shared.type_embed) and torch.equal(pos[1], shared.type_embed)
    assert all(torch.equal(pos[i], per_clip.type_embed) for i in (2, 3, 4))
    with pytest.raises(ValueError, match="batch size 4"):
        qs.content(2)


def test_query_set_rejects_bad_groups() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        QuerySet([_group("a", 1), _group("a", 2)])
    with pytest.raises(ValueError, match="at least one"):
        QuerySet([])
    with pytest.raises(ValueError, match="disagree on batch size"):
        QuerySet([_group("a", 1, batch=2), _group("b", 1, batch=3)])
    with pytest.raises(ValueError, match="different widths"):
        QuerySet([_group("a", 1), QueryGroup("b", torch.randn(1, D + 1), torch.randn(D + 1))])
    with pytest.raises(ValueError, match="type_embed"):
        QueryGroup("x", torch.randn(2, D), torch.randn(D + 1))
    with pytest.raises(KeyError, match="no group 'zzz'"):
        QuerySet([_group("a", 1)])["zzz"]


def test_learned_queries_shared_or_per_batch_content() -> None:
    torch.manual_seed(0)
    learned = LearnedQueries(D, 5)
    g = learned.group("instance")
    assert g.content is learned.content and g.type_embed is learned.type_embed and g.num_queries == 5
    per_batch_only = LearnedQueries(D, None)
    assert per_batch_only.num_queries is None
    assert [n for n, _ in per_batch_only.named_parameters()] == ["type_embed"]
    with pytest.raises(ValueError, match="no learned content"):
        per_batch_only.group("vos")
    init = torch.randn(2, 6, D)
    g2 = per_batch_only.group("vos", content=init)
    assert g2.batch_size == 2 and torch.equal(QuerySet([g2]).content(2), init)


def test_semantic_bank_is_keyed_and_adding_keeps_existing_values() -> None:
    torch.manual_seed(0)
    bank = SemanticQueryBank(D, {"ytvis": 40, "ovis": 25})
    assert bank.vocabularies == {"ytvis": 40, "ovis": 25}
    before = {k: v.detach().clone() for k, v in bank.state_dict().items()}
    bank.add_vocabulary("vipseg", 124)
    bank.add_vocabulary("ytvis", 40)  # same size again: no-op
    after = bank.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert set(after) == {"type_embed", "queries.ytvis", "queries.ovis", "queries.vipseg"}
    g = bank.group("ovis")
    assert g.name == "semantic" and g.content.shape == (25, D) and g.type_embed is bank.type_embed
    assert bank.group("ovis", name="sem2").name == "sem2"
    with pytest.raises(ValueError, match="already has 40 classes"):
        bank.add_vocabulary("ytvis", 41)
    with pytest.raises(ValueError, match="positive int"):
        bank.add_vocabulary("empty", 0)
    with pytest.raises(KeyError, match="no semantic vocabulary 'coco'"):
        bank.group("coco")


def test_semantic_bank_checkpoint_round_trip_with_new_vocabulary() -> None:
    old = SemanticQueryBank(D, {"ytvis": 4})
    new = SemanticQueryBank(D, {"ytvis": 4, "ovis": 3})
    missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
    assert missing == ["queries.ovis"] and unexpected == []
    assert torch.equal(new.queries["ytvis"], old.queries["ytvis"])
