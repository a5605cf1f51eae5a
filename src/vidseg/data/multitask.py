"""Multi-task / multi-dataset batch sampler: one (task, dataset) group per optimizer step, same on every rank.

The group of step s is drawn from an RNG seeded by (seed, s // chunk), so every rank agrees without any
communication; each rank draws sample indices from its own shard of that dataset with a rank-specific RNG.
All micro-batches of one optimizer step (gradient accumulation) share the step's group. The sampler's
position (the next micro-batch) is saved in the checkpoint through `state_dict` / `load_state_dict`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

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
    steps_per_epoch: optimizer steps per epoch; accumulate: micro-batches per optimizer step.
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
    ) -> None:
        if len(sizes) != len(weights) or not sizes:
            raise ValueError("MultiTaskBatchSampler: sizes and weights must be non-empty and of equal length")
        if any(s < world_size for s in sizes):
            raise ValueError(f"MultiTaskBatchSampler: every dataset needs ≥ world_size items, got sizes {sizes}")
        w = np.asarray(weights, dtype=np.float64)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"MultiTaskBatchSampler: weights must be ≥ 0 with a positive sum, got {weights}")
        self.sizes = list(sizes)
        self.probs = w / w.sum()
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(int)
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.chunk, self.accumulate = max(1, chunk), max(1, accumulate)
        self.epoch = 0
        self.position = 0  # next micro-batch within the current epoch
        self.sampler = _EpochProxy(self)

    def __len__(self) -> int:
        return self.steps_per_epoch * self.accumulate

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.position = 0

    def group_of_step(self, global_step: int) -> int:
        """Dataset index used by optimizer step `global_step` (identical on every rank)."""
        rng = np.random.default_rng([self.seed, global_step // self.chunk])
        return int(rng.choice(len(self.sizes), p=self.probs))

    def indices_of(self, micro_step: int) -> list[int]:
        """Global indices of micro-batch `micro_step` of the current epoch on this rank."""
        step = self.epoch * self.steps_per_epoch + micro_step // self.accumulate
        g = self.group_of_step(step)
        rng = np.random.default_rng([self.seed, 1 + self.rank, self.epoch, micro_step])
        shard = np.arange(self.rank, self.sizes[g], self.world_size)
        local = rng.choice(shard, size=self.batch_size, replace=len(shard) < self.batch_size)
        return [int(self.offsets[g] + i) for i in local]

    def __iter__(self) -> Iterator[list[int]]:
        while self.position < len(self):
            idx = self.indices_of(self.position)
            self.position += 1
            yield idx
        self.position = 0
        self.epoch += 1

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
