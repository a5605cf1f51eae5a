"""Batched Hungarian matcher vs the straightforward per-sample, per-pair reference, on the same inputs.

Setting of the issue: B=8 clips, Q=128+C queries (C=40), N=10 GT objects, T=3 frames, 12,544 points.
Both produce the same cost matrices (checked) and assignments; the script prints the times and the speed-up.

    python scripts/bench_matcher.py [--json PATH] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from vidseg.losses.matching import HungarianMatcher, MatchTargets, reference_match


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--classes", type=int, default=40)
    parser.add_argument("--queries", type=int, default=128)
    parser.add_argument("--objects", type=int, default=10)
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--points", type=int, default=12544)
    parser.add_argument("--size", type=int, default=96, help="mask logit side (GT masks are 4x larger)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    g = torch.Generator().manual_seed(0)
    b, q, c, n, t, s = args.batch, args.queries + args.classes, args.classes, args.objects, args.frames, args.size
    class_logits = torch.randn(b, q, 1 + c, generator=g)
    mask_logits = torch.randn(b, q, t, s, s, generator=g)
    class_ids = [torch.randint(0, c, (n,), generator=g) for _ in range(b)]
    masks = [torch.rand(n, t, 4 * s, 4 * s, generator=g) > 0.5 for _ in range(b)]
    coords = torch.rand(b, args.points, 2, generator=g)
    matcher = HungarianMatcher(num_points=args.points)
    targets = MatchTargets.pad(class_ids, masks)

    ours_s, ours = best_of(lambda: matcher(class_logits, mask_logits, targets, coords=coords), args.repeats)
    ref_s, ref = best_of(lambda: reference_match(class_logits, mask_logits, class_ids, masks, coords), 1)
    cost = matcher.cost_matrices(class_logits, mask_logits, targets, coords=coords)
    max_diff = max(float((cost[i, :, :n] - r[2]).abs().max()) for i, r in enumerate(ref))
    same = all(torch.equal(a[0], r[0]) and torch.equal(a[1], r[1]) for a, r in zip(ours, ref))
    if not same or max_diff > 1e-4:
        raise SystemExit(f"batched matcher disagrees with the reference (max cost diff {max_diff:.2e})")
    result = {
        "speedup": ref_s / ours_s, "ours_s": ours_s, "reference_s": ref_s, "max_cost_diff": max_diff,
        "setting": {"B": b, "Q": q, "C": c, "N": n, "T": t, "points": args.points, "logit_size": s},
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
    }
    print(f"matcher B={b} Q={q} N={n} T={t} P={args.points}: batched {ours_s * 1e3:.1f} ms, "
          f"per-sample reference {ref_s * 1e3:.1f} ms, speed-up {result['speedup']:.1f}x "
          f"(same assignments, max cost diff {max_diff:.1e}; {result['machine']})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
