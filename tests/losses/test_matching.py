"""The batched matcher equals a straightforward per-sample, per-pair reference (same cost, same assignment)."""

from __future__ import annotations

import pytest
import torch

from vidseg.losses.matching import HungarianMatcher, MatchTargets, reference_match


def _problem(seed: int, b: int = 3, q: int = 7, c: int = 5, t: int = 2, h: int = 8, w: int = 10):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, q, 1 + c, generator=g)
    masks_pred = torch.randn(b, q, t, h, w, generator=g)
    counts = [3, 0, 5][:b]
    cls = [torch.randint(0, c, (n,), generator=g) for n in counts]
    gt = [torch.rand(n, t, 4 * h, 4 * w, generator=g) > 0.6 for n in counts]
    coords = torch.rand(b, 50, 2, generator=g)
    return logits, masks_pred, cls, gt, coords


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_cost_and_assignment_equal_reference(seed: int) -> None:
    logits, masks_pred, cls, gt, coords = _problem(seed)
    matcher = HungarianMatcher(2.0, 5.0, 5.0, num_points=50)
    targets = MatchTargets.pad(cls, gt)
    cost = matcher.cost_matrices(logits, masks_pred, targets, coords=coords)
    got = matcher(logits, masks_pred, targets, coords=coords)
    ref = reference_match(logits, masks_pred, cls, gt, coords)
    for b, (rows, cols, ref_cost) in enumerate(ref):
        n = gt[b].shape[0]
        torch.testing.assert_close(cost[b, :, :n], ref_cost, atol=1e-5, rtol=1e-5)
        assert torch.equal(got[b][0], rows) and torch.equal(got[b][1], cols)
        assert len(rows) == n  # every target gets a query (Q >= N)


def test_matcher_finds_the_obvious_assignment() -> None:
    # query i predicts target perm[i] perfectly: the matcher must recover the permutation
    t, h, w = 2, 16, 16
    g = torch.Generator().manual_seed(3)
    gt = torch.rand(4, t, h, w, generator=g) > 0.5
    perm = torch.tensor([2, 0, 3, 1])
    pred = torch.full((1, 6, t, h, w), -20.0)
    for q, n in enumerate(perm.tolist()):
        pred[0, q] = gt[n].float() * 40 - 20
    cls = torch.tensor([0, 1, 2, 3])
    logits = torch.zeros(1, 6, 5)
    for q, n in enumerate(perm.tolist()):
        logits[0, q, int(cls[n]) + 1] = 10.0
    rows, cols = HungarianMatcher(num_points=256)(logits, pred, MatchTargets.pad([cls], [gt]))[0]
    assert dict(zip(cols.tolist(), rows.tolist())) == {n: q for q, n in enumerate(perm.tolist())}
