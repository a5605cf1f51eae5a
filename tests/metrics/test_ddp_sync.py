"""Every benchmark metric syncs across 2 DDP ranks on the CPU (gloo): two processes update disjoint, unevenly sized
halves of the videos, and torchmetrics' `compute` (which gathers the states) gives on both ranks exactly the values
of one process that saw every video."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
H, W, T = 48, 64, 6


def _metrics_and_videos() -> dict[str, tuple[Any, list[tuple[Any, Any]]]]:
    """name -> (metric factory, [(prediction, GT)]), built deterministically (same on every process)."""
    from _dense_references import make_gt_video, make_prediction, random_panoptic_video
    from _metric_references import burst_video, davis_video, ytvis_video
    from vidseg.data.records import IGNORE_LABEL, Category
    from vidseg.metrics.hota import BurstHOTA
    from vidseg.metrics.jf import DavisJF
    from vidseg.metrics.miou import SemanticMIoU
    from vidseg.metrics.stq import STQ
    from vidseg.metrics.vpq import VPQ
    from vidseg.metrics.ytvis_ap import YTVISMeanAP

    cats = [Category(0, "road", False), Category(1, "sky", False), Category(4, "car", True),
            Category(5, "person", True)]  # fmt: skip
    vocab = [1, 2, 3, 4, 13, 34, 20]
    rng = np.random.default_rng(7)
    out: dict[str, tuple[Any, list]] = {}
    yt = [ytvis_video(rng, v, H, W, T, n_obj=3) for v in range(1, 7)]
    out["ytvis"] = (lambda: YTVISMeanAP(category_ids=[1, 2, 3]), [(p, g) for g, p in yt])
    dv = [davis_video(rng, f"v{i}", H, W, T, n_obj=3) for i in range(6)]
    out["davis"] = (lambda: DavisJF(mode="semi"), [(p, g) for g, p, _ in dv])
    bu = [burst_video(rng, v, H, W, T, vocab, n_obj=3) for v in range(1, 7)]
    out["burst"] = (lambda: BurstHOTA(category_ids=vocab, similarity="mask"), [(p, g) for g, p in bu])
    for name, factory, crowd in (
        ("vpq", lambda: VPQ(cats, windows=(1, 2)), False),
        ("stq_kitti", lambda: STQ(cats, variant="kitti"), True),
        ("stq_vipseg", lambda: STQ(cats, variant="vipseg"), False),
    ):
        pairs = []
        for i in range(6):
            gs, gi, ps, pi = random_panoptic_video(rng, T, H, W, cats, num_tracks=3, crowd=crowd)
            gt = make_gt_video(f"v{i}", gs, gi)
            pairs.append((make_prediction(f"v{i}", ps, pi, gt.frames.names), gt))
        out[name] = (factory, pairs)
    pairs = []
    for i in range(6):
        gs = [np.where(rng.random((H, W)) < 0.05, IGNORE_LABEL, rng.integers(0, 2, (H, W))).astype(np.int32)]
        gs += [np.roll(gs[-1], t, axis=1) for t in range(1, T)]
        ps = [np.where(rng.random((H, W)) < 0.2, 1 - np.maximum(g, 0) % 2, np.maximum(g, 0) % 2) for g in gs]
        gt = make_gt_video(f"v{i}", gs, [np.zeros_like(g) for g in gs])
        pairs.append((make_prediction(f"v{i}", [p.astype(np.int32) for p in ps], None, gt.frames.names), gt))
    out["miou"] = (lambda: SemanticMIoU(cats[:2], vc_windows=(2, 4)), pairs)
    return out


def _values(result: Any) -> dict[str, float]:
    """A compute() result as a flat {key: float} (per-class dicts flattened)."""
    flat: dict[str, float] = {}
    for k, v in result.items():
        if isinstance(v, dict):
            flat.update({f"{k}/{kk}": float(vv) for kk, vv in v.items() if isinstance(vv, (int, float))})
        elif isinstance(v, (int, float)):
            flat[k] = float(v)
    return flat


RANK_VIDEOS = {0: [0, 1, 2, 3], 1: [4, 5]}  # uneven: gathered states differ in length


def rank_main(rank: int, store: str, out: str) -> None:
    """One DDP rank: update its videos of every metric, compute (synced), write the values."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        results = {}
        for name, (factory, pairs) in _metrics_and_videos().items():
            metric = factory()
            for i in RANK_VIDEOS[rank]:
                metric.update(*pairs[i])
            results[name] = _values(metric.compute())
    finally:
        dist.destroy_process_group()
    Path(out).write_text(json.dumps(results))
    # gloo's threads can abort the interpreter's teardown ("terminate called without an active exception", seen
    # once in CI after both ranks had written their values): the results are on disk, so leave without teardown
    sys.stdout.flush()
    os._exit(0)


@pytest.mark.slow
def test_every_metric_syncs_across_two_ranks(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO / "scripts"), str(REPO / "src")])}
    code = "import sys, test_ddp_sync as t; t.rank_main(int(sys.argv[1]), sys.argv[2], sys.argv[3])"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(r), str(tmp_path / "store"), str(tmp_path / f"rank{r}.json")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        for r in (0, 1)
    ]
    for p in procs:
        log, _ = p.communicate(timeout=600)
        assert p.returncode == 0, log[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    single = {}
    for name, (factory, pairs) in _metrics_and_videos().items():
        metric = factory()
        for pair in pairs:
            metric.update(*pair)
        single[name] = _values(metric.compute())
    assert set(single) == {"ytvis", "davis", "burst", "vpq", "stq_kitti", "stq_vipseg", "miou"}
    for name, expected in single.items():
        assert expected, name
        for r in (0, 1):
            got = ranks[r][name]
            assert got.keys() == expected.keys(), (name, r)
            for k, v in expected.items():
                same = math.isclose(got[k], v, rel_tol=1e-12, abs_tol=1e-12) or (math.isnan(v) and math.isnan(got[k]))
                assert same, (name, r, k, got[k], v)
    # the halves alone differ from the whole (the sync did something)
    half = {}
    for name, (factory, pairs) in _metrics_and_videos().items():
        metric = factory()
        for i in RANK_VIDEOS[0]:
            metric.update(*pairs[i])
        half[name] = _values(metric.compute())
    assert sum(half[n] != single[n] for n in single) >= 6
