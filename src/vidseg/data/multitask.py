"""Multi-task / multi-dataset batch sampler: one (task, dataset) group per optimizer step, same on every rank.

The group of optimizer step s is drawn from an RNG seeded by (seed, s // chunk), so every rank agrees without
any communication; each rank draws its sample indices from its own shard of that dataset (indices ≡ rank mod
world_size, so the ranks' samples are disjoint) with an RNG seeded by (seed, rank, micro-batch). All
micro-batches of one optimizer step (gradient accumulation) share the step's group.

Everything is a pure function of the global micro-batch number m (micro-batches since the start of training):
step = m // accumulate, epoch = m // len(sampler). Resuming therefore only needs m, which the datamodule
derives from the trainer's progress counters (not from how far DataLoader workers have prefetched) and passes
to `resume_from`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np


class _EpochProxy:
    """Lightning calls `set_epoch` on `batch_sampler.sampler`; forward it to the batch sampler."""

    def __init__(self, owner: MultiTaskBatchSampler) -> None:
        self._owner = owner

    def set_epoch(self, epoch: int) -> None:
        self._owner.set_epoch(epoch)


class MultiTaskBatchSampler:
    """Yields lists of global indices into the concatenation of `sizes` datasets.

    sizes: number of items of each dataset (in concatenation order); weights: sampling weight per dataset;
    batch_size: clips per micro-batch per rank; steps_per_epoch: optimizer steps per epoch; accumulate:
    micro-batches per optimizer step; chunk: consecutive optimizer steps that share one draw of the group;
    on_epoch: called with the epoch whenever it changes (the datamodule sets the clip datasets' epoch).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float],
        batch_size: int,
        steps_per_epoch: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        chunk: int = 1,
        accumulate: int = 1,
        on_epoch: Callable[[int], None] | None = None,
    ) -> None:
        if len(sizes) != len(weights) or not sizes:
            raise ValueError("MultiTaskBatchSampler: sizes and weights must be non-empty and of equal length")
        if not 0 <= rank < world_size:
            raise ValueError(f"MultiTaskBatchSampler: rank {rank} outside world_size {world_size}")
        if any(s < world_size for s in sizes):
            raise ValueError(f"MultiTaskBatchSampler: every dataset needs ≥ world_size items, got sizes {sizes}")
        if batch_size < 1 or steps_per_epoch < 1:
            raise ValueError(
                f"MultiTaskBatchSampler: batch_size and steps_per_epoch must be ≥ 1, got {batch_size}, "
                f"{steps_per_epoch}"
            )
        w = np.asarray(weights, dtype=np.float64)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"MultiTaskBatchSampler: weights must be ≥ 0 with a positive sum, got {weights}")
        self.sizes = [int(s) for s in sizes]
        self.probs = w / w.sum()
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.batch_size = int(batch_size)
        self.steps_per_epoch = int(steps_per_epoch)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.chunk, self.accumulate = max(1, int(chunk)), max(1, int(accumulate))
        self.on_epoch = on_epoch
        self.epoch = 0
        self.position = 0  # global micro-batch number of the next index list handed out
        self._resume: int | None = None
        self.sampler = _EpochProxy(self)

    def __len__(self) -> int:
        """Micro-batches per epoch."""
        return self.steps_per_epoch * self.accumulate

    # ------------------------------------------------------------------ position
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next `__iter__` walks through (Lightning calls this every epoch)."""
        if epoch < 0:
            raise ValueError(f"MultiTaskBatchSampler.set_epoch: epoch must be ≥ 0, got {epoch}")
        changed = epoch != self.epoch
        self.epoch = int(epoch)
        if changed and self.on_epoch is not None:
            self.on_epoch(self.epoch)

    def resume_from(self, micro_batch: int) -> None:
        """Continue at global micro-batch `micro_batch` (micro-batches already trained): the next `__iter__`
        starts there and the epoch becomes the one containing it."""
        if micro_batch < 0:
            raise ValueError(f"MultiTaskBatchSampler.resume_from: micro_batch must be ≥ 0, got {micro_batch}")
        self._resume = int(micro_batch)
        self.position = int(micro_batch)
        self.set_epoch(micro_batch // len(self))

    # ------------------------------------------------------------------ draws
    def group_of_step(self, step: int) -> int:
        """Dataset index used by optimizer step `step` (identical on every rank)."""
        rng = np.random.default_rng([self.seed, step // self.chunk])
        return int(rng.choice(len(self.sizes), p=self.probs))

    def group_of_micro(self, micro_batch: int) -> int:
        """Dataset index of global micro-batch `micro_batch`."""
        return self.group_of_step(micro_batch // self.accumulate)

    def indices_of(self, micro_batch: int) -> list[int]:
        """Global indices (into the concatenation) of global micro-batch `micro_batch` on this rank."""
        g = self.group_of_micro(micro_batch)
        rng = np.random.default_rng([self.seed, 1 + self.rank, micro_batch])
        shard_len = (self.sizes[g] - self.rank + self.world_size - 1) // self.world_size
        local = rng.choice(shard_len, size=self.batch_size, replace=shard_len < self.batch_size)
        return [int(self.offsets[g] + self.rank + self.world_size * i) for i in local]

    def __iter__(self) -> Iterator[list[int]]:
        begin, end = self.epoch * len(self), (self.epoch + 1) * len(self)
        if self._resume is not None:
            begin = max(begin, self._resume)
            self._resume = None
        for m in range(begin, end):
            self.position = m + 1
            yield self.indices_of(m)

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, int]:
        """Epoch and next micro-batch of this sampler's own iteration (ahead of training when prefetching)."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.resume_from(int(state["position"]))
