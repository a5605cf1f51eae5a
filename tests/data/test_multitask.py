"""MultiTaskBatchSampler: same group per step on every rank, disjoint rank shards, accumulation, weights,
resume from a micro-batch, epochs, DataLoader workers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chisquare
from torch.utils.data import DataLoader, Dataset

from vidseg.data.multitask import MultiTaskBatchSampler

SIZES = [40, 25, 60, 18, 33]
WEIGHTS = [0.45, 0.1, 0.25, 0.1, 0.1]


def _sampler(rank: int = 0, world: int = 1, **kw) -> MultiTaskBatchSampler:
    args = dict(batch_size=3, steps_per_epoch=50, seed=7, rank=rank, world_size=world)
    args.update(kw)
    return MultiTaskBatchSampler(SIZES, WEIGHTS, **args)


def _group_of_index(i: int) -> int:
    return int(np.searchsorted(np.cumsum(SIZES), i, side="right"))


def test_every_rank_gets_the_same_group_and_disjoint_shards() -> None:
    world = 4
    samplers = [_sampler(r, world, accumulate=2) for r in range(world)]
    epoch = [list(s) for s in samplers]
    assert all(len(e) == 100 for e in epoch)  # 50 steps × 2 micro-batches
    for m in range(100):
        groups = {_group_of_index(i) for r in range(world) for i in epoch[r][m]}
        assert len(groups) == 1, f"micro-batch {m}: ranks disagree on the group {groups}"
    offsets = np.concatenate([[0], np.cumsum(SIZES)[:-1]])
    seen = [set() for _ in range(world)]
    for r in range(world):
        for batch in epoch[r]:
            for i in batch:
                g = _group_of_index(i)
                assert (i - offsets[g]) % world == r  # this rank's shard of dataset g
                seen[r].add(i)
    for a in range(world):
        for b in range(a + 1, world):
            assert not seen[a] & seen[b]
    assert all(len(s) > 25 for s in seen)  # ~44 items per shard: really sampled, not one index repeated


def test_micro_batches_of_a_step_share_the_group_and_chunks_share_steps() -> None:
    s = _sampler(accumulate=4, chunk=3)
    groups = [s.group_of_micro(m) for m in range(4 * 60)]
    for step in range(60):
        assert len(set(groups[4 * step: 4 * step + 4])) == 1
    per_step = groups[::4]
    for c in range(20):
        assert len(set(per_step[3 * c: 3 * c + 3])) == 1
    assert len(set(per_step)) > 1  # chunks do change group
    # the group is a function of the step only: a sampler with other rank/accumulation agrees per step
    other = _sampler(rank=1, world=2, accumulate=1, chunk=3)
    assert [other.group_of_step(k) for k in range(60)] == per_step


def test_group_frequencies_follow_the_weights() -> None:
    s = _sampler()
    steps = 2000
    counts = np.bincount([s.group_of_step(k) for k in range(steps)], minlength=len(SIZES))
    expected = np.asarray(WEIGHTS) / sum(WEIGHTS) * steps
    assert chisquare(counts, expected).pvalue > 1e-3, counts
    # the same test rejects weights the sampler does not use (it can fail)
    uniform = np.full(len(SIZES), steps / len(SIZES))
    assert chisquare(counts, uniform).pvalue < 1e-6


def test_zero_weight_dataset_is_never_drawn() -> None:
    s = MultiTaskBatchSampler([10, 10, 10], [1.0, 0.0, 2.0], batch_size=2, steps_per_epoch=300, seed=1)
    assert 1 not in {s.group_of_step(k) for k in range(300)}


def test_resume_from_a_micro_batch_continues_the_same_sequence() -> None:
    full = _sampler(accumulate=2)
    reference = []
    for epoch in range(3):
        full.set_epoch(epoch)
        reference.extend(list(full))
    assert len(reference) == 300
    for start in (0, 37, 100, 199, 250):
        s = _sampler(accumulate=2)
        s.resume_from(start)
        assert s.epoch == start // 100
        out = list(s)  # rest of the resumed epoch
        for epoch in range(s.epoch + 1, 3):
            s.set_epoch(epoch)
            out.extend(list(s))
        assert out == reference[start:], start


def test_resume_at_epoch_end_with_lightning_in_the_previous_epoch_yields_nothing_then_next_epoch() -> None:
    s = _sampler(steps_per_epoch=5)
    s.resume_from(5)
    s.set_epoch(0)  # Lightning may still be in the finished epoch
    assert list(s) == []
    s.set_epoch(1)
    assert list(s) == [s.indices_of(m) for m in range(5, 10)]


def test_epochs_differ_and_the_epoch_callback_fires() -> None:
    calls: list[int] = []
    s = _sampler(on_epoch=calls.append)
    e0 = list(s)
    s.set_epoch(1)
    s.set_epoch(1)
    e1 = list(s)
    assert calls == [1]
    assert e0 != e1
    assert len(e0) == len(e1) == len(s) == 50
    assert s.state_dict() == {"epoch": 1, "position": 100}
    t = _sampler()
    t.load_state_dict(s.state_dict())
    assert t.epoch == 2 and t.position == 100


class _IndexDataset(Dataset):
    def __len__(self) -> int:
        return sum(SIZES)

    def __getitem__(self, i: int) -> int:
        return i


def test_dataloader_with_workers_yields_the_sampler_batches() -> None:
    s = _sampler(steps_per_epoch=12, accumulate=2)
    s.resume_from(5)
    loader = DataLoader(_IndexDataset(), batch_sampler=s, num_workers=2, collate_fn=list)
    got = list(loader)
    assert got == [s.indices_of(m) for m in range(5, 24)]


@pytest.mark.parametrize(
    ("sizes", "weights", "kw", "match"),
    [
        ([10, 10], [1.0], {}, "equal length"),
        ([10, 1], [1.0, 1.0], {"world_size": 2}, "world_size items"),
        ([10, 10], [-1.0, 2.0], {}, "weights"),
        ([10, 10], [0.0, 0.0], {}, "weights"),
        ([10, 10], [1.0, 1.0], {"rank": 2, "world_size": 2}, "rank 2"),
    ],
)
def test_bad_configuration_is_rejected(sizes: list, weights: list, kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MultiTaskBatchSampler(sizes, weights, batch_size=2, steps_per_epoch=5, **kw)


def test_small_shards_sample_with_replacement_within_the_shard() -> None:
    s = MultiTaskBatchSampler([5], [1.0], batch_size=4, steps_per_epoch=3, rank=1, world_size=2)
    for m in range(3):
        idx = s.indices_of(m)
        assert len(idx) == 4 and set(idx) <= {1, 3}
