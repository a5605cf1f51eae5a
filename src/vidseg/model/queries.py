"""Query groups: the abstract targets the decoder segments (TarViS §6.3, §7).

A query is a content vector ("init") plus a positional vector ("embed"). Each group (instance, background,
semantic, vos, point, ...) has its own content vectors and ONE learned type embedding shared by all of its
queries. A :class:`QuerySet` concatenates groups in a fixed order for the decoder and remembers where each
group lives, so every decoder output can be split back into per-group tensors by name.

Content comes either from learned parameters ([n, d], same for every clip) or per batch ([B, n, d], e.g. the
VOS object encoder's output). Semantic queries live in a :class:`SemanticQueryBank` keyed by vocabulary
(dataset) name, never sliced by offsets (the TarViS offset table breaks when datasets change, §12.4).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class QueryGroup:
    """One named group of queries.

    Attributes:
        name: group name; selects the mask head / projection of the decoder.
        content: content init, [n, d] (shared by the batch) or [B, n, d] (per clip).
        type_embed: the group's learned type embedding, [d]; added to q/k in attention.
    """

    name: str
    content: Tensor
    type_embed: Tensor

    def __post_init__(self) -> None:
        if self.content.dim() not in (2, 3):
            raise ValueError(
                f"query group {self.name!r}: content must be [n, d] or [B, n, d], "
                f"got shape {tuple(self.content.shape)}"
            )
        if self.type_embed.dim() != 1 or self.type_embed.shape[0] != self.content.shape[-1]:
            raise ValueError(
                f"query group {self.name!r}: type_embed must be [d={self.content.shape[-1]}], "
                f"got shape {tuple(self.type_embed.shape)}"
            )

    @property
    def num_queries(self) -> int:
        return int(self.content.shape[-2])

    @property
    def dim(self) -> int:
        return int(self.content.shape[-1])

    @property
    def batch_size(self) -> int | None:
        """Batch size of per-clip content, None when the content is shared by the batch."""
        return int(self.content.shape[0]) if self.content.dim() == 3 else None

    def expand_content(self, batch_size: int) -> Tensor:
        """Content as [B, n, d]."""
        if self.content.dim() == 3:
            return self.content
        return self.content.unsqueeze(0).expand(batch_size, -1, -1)


class QuerySet:
    """Named query groups concatenated in order; carries group slices/ids to the outputs.

    ``query_adders`` optionally travels with the set: {group name: fn(previous mask logits [B, n, T, h, w])
    -> [B, n, d]}, used by the decoder when its own ``query_adders`` argument is None (GvSeg SPA hook).
    """

    def __init__(
        self,
        groups: Sequence[QueryGroup],
        query_adders: Mapping[str, Callable[[Tensor], Tensor]] | None = None,
    ) -> None:
        if not groups:
            raise ValueError("QuerySet needs at least one query group")
        names = [g.name for g in groups]
        if len(set(names)) != len(names):
            raise ValueError(f"QuerySet: duplicate group names in {names}")
        dims = {g.dim for g in groups}
        if len(dims) != 1:
            raise ValueError(f"QuerySet: groups have different widths {sorted(dims)}")
        batch_sizes = {g.batch_size for g in groups} - {None}
        if len(batch_sizes) > 1:
            raise ValueError(f"QuerySet: per-clip groups disagree on batch size {sorted(batch_sizes)}")
        self.groups: tuple[QueryGroup, ...] = tuple(groups)
        self.dim: int = dims.pop()
        self._batch_size: int | None = batch_sizes.pop() if batch_sizes else None
        self.slices: dict[str, slice] = {}
        start = 0
        for g in self.groups:
            self.slices[g.name] = slice(start, start + g.num_queries)
            start += g.num_queries
        self.num_queries: int = start
        self.query_adders: Mapping[str, Callable[[Tensor], Tensor]] | None = query_adders

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    def __iter__(self) -> Iterator[QueryGroup]:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, name: str) -> QueryGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"QuerySet has no group {name!r}; groups: {self.names}")

    def resolve_batch_size(self, batch_size: int) -> int:
        """Check that per-clip groups agree with ``batch_size`` (the number of clips) and return it."""
        if self._batch_size is not None and self._batch_size != batch_size:
            raise ValueError(
                f"QuerySet: per-clip query content has batch size {self._batch_size}, "
                f"features have {batch_size}"
            )
        return batch_size

    def group_ids(self, device: torch.device | str | None = None) -> Tensor:
        """Long tensor [Q]: index of each query's group (in group order)."""
        sizes = torch.tensor([g.num_queries for g in self.groups], device=device)
        return torch.repeat_interleave(torch.arange(len(self.groups), device=device), sizes)

    def content(self, batch_size: int) -> Tensor:
        """Concatenated content init, [B, Q, d]."""
        batch_size = self.resolve_batch_size(batch_size)
        return torch.cat([g.expand_content(batch_size) for g in self.groups], dim=1)

    def type_embed(self) -> Tensor:
        """Per-query positional embedding (the group's type embedding repeated), [Q, d]."""
        return torch.cat([g.type_embed.unsqueeze(0).expand(g.num_queries, -1) for g in self.groups], dim=0)

    def split(self, tensor: Tensor, dim: int = 1) -> dict[str, Tensor]:
        """Split a tensor whose ``dim`` indexes the Q queries into {group name: part}, in group order."""
        if tensor.shape[dim] != self.num_queries:
            raise ValueError(
                f"QuerySet.split: dim {dim} has size {tensor.shape[dim]}, expected {self.num_queries} queries"
            )
        parts = torch.split(tensor, [g.num_queries for g in self.groups], dim=dim)
        return dict(zip(self.names, parts, strict=True))


class LearnedQueries(nn.Module):
    """Learned content vectors [n, d] (or none, for per-batch content) plus one type embedding [d].

    ``num_queries=None`` means the content is supplied per batch (e.g. by an object encoder); only the type
    embedding is learned. Both are initialised N(0, 1) as in TarViS.
    """

    def __init__(self, d_model: int, num_queries: int | None) -> None:
        super().__init__()
        self.d_model = d_model
        self.type_embed = nn.Parameter(torch.randn(d_model))
        self.content = nn.Parameter(torch.randn(num_queries, d_model)) if num_queries else None

    @property
    def num_queries(self) -> int | None:
        return None if self.content is None else int(self.content.shape[0])

    def group(self, name: str, content: Tensor | None = None) -> QueryGroup:
        """A :class:`QueryGroup` with the learned content, or with ``content`` ([n, d] / [B, n, d])."""
        if content is None:
            if self.content is None:
                raise ValueError(f"query group {name!r} has no learned content; pass content per batch")
            content = self.content
        return QueryGroup(name=name, content=content, type_embed=self.type_embed)


class SemanticQueryBank(nn.Module):
    """Semantic (class) queries per vocabulary key, plus one shared semantic type embedding.

    Each vocabulary ("ytvis", "ovis", "vipseg", ...) owns its own [C, d] parameter, so adding or removing a
    vocabulary never moves or changes another one (unlike TarViS' offset-sliced table).
    """

    def __init__(self, d_model: int, vocabularies: Mapping[str, int] | None = None) -> None:
        super().__init__()
        self.d_model = d_model
        self.type_embed = nn.Parameter(torch.randn(d_model))
        self.queries = nn.ParameterDict()
        for key, num_classes in (vocabularies or {}).items():
            self.add_vocabulary(key, num_classes)

    @property
    def vocabularies(self) -> dict[str, int]:
        """{key: number of classes}."""
        return {key: int(p.shape[0]) for key, p in self.queries.items()}

    def add_vocabulary(self, key: str, num_classes: int) -> None:
        """Register a vocabulary with ``num_classes`` fresh N(0, 1) queries; same size again is a no-op."""
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"vocabulary {key!r}: num_classes must be a positive int, got {num_classes!r}")
        if key in self.queries:
            existing = int(self.queries[key].shape[0])
            if existing != num_classes:
                raise ValueError(
                    f"vocabulary {key!r} already has {existing} classes, asked for {num_classes}"
                )
            return
        ref = self.type_embed
        self.queries[key] = nn.Parameter(
            torch.randn(num_classes, self.d_model, device=ref.device, dtype=ref.dtype)
        )

    def group(self, key: str, name: str = "semantic") -> QueryGroup:
        """The vocabulary's semantic queries as a :class:`QueryGroup` named ``name``."""
        if key not in self.queries:
            raise KeyError(f"no semantic vocabulary {key!r}; known: {sorted(self.queries.keys())}")
        return QueryGroup(name=name, content=self.queries[key], type_embed=self.type_embed)
