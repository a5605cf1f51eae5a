"""2-process DDP on CPU (gloo) with `task=multi`: every rank trains the same (task, dataset) group on every
micro-batch (all_gather), ranks read disjoint samples, gradient accumulation skips the all-reduce on non-final
micro-steps (grads differ across ranks there and agree after the final one), and the heads of the tasks a
step does not use never break DDP (every parameter gets a gradient, find_unused_parameters off)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vidseg.utils.audit import read_audit
from vidseg.utils.launch import QUICK, run_train


@pytest.mark.slow
def test_two_process_ddp_multi_task(tmp_path: Path) -> None:
    run, audit = tmp_path / "run", tmp_path / "audit"
    run_train([
        *QUICK, "task=multi", "trainer=ddp", "trainer.devices=2", "data.global_batch=4", "data.chunk=1",
        "trainer.max_steps=4", "validate=false", "checkpoint.every_n_steps=4", f"hydra.run.dir={run}",
        "+callbacks.audit._target_=vidseg.utils.audit.SamplerAudit", f"+callbacks.audit.dirpath={audit}",
    ], timeout=900, log=tmp_path / "train.log")
    records = read_audit(audit)
    assert sorted(records) == [0, 1]
    # global batch 4 = 1 clip × 2 ranks × 2 micro-batches: 4 steps are 8 micro-batches per rank
    assert [r["micro"] for r in records[0]] == [r["micro"] for r in records[1]] == list(range(8))
    groups_seen = set()
    for r0, r1 in zip(records[0], records[1], strict=True):
        assert r0["groups"] == r1["groups"]  # all_gather of the per-micro-batch group: identical everywhere
        assert len(set(r0["groups"])) == 1, r0
        assert r0["dataset"] == r1["dataset"] and r0["sampler_group"] == r0["groups"][0]
        assert r0["step"] == r1["step"] == r0["micro"] // 2
        final = r0["micro"] % 2 == 1
        assert r0["sync"] is r1["sync"] is final  # Lightning's no_sync on the non-final micro-step
        g0, g1 = r0["grad_sums"]
        if final:
            assert g0 == g1  # all-reduced
        else:
            assert g0 != g1  # local gradients only
        assert r0["grads_missing"] == r1["grads_missing"] == 0
        groups_seen.add(r0["dataset"])
    assert len(groups_seen) >= 2  # the steps did switch between tasks
    idx0 = {i for r in records[0] for i in r["indices"]}
    idx1 = {i for r in records[1] for i in r["indices"]}
    assert idx0 and idx1 and not idx0 & idx1
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 4
    assert state["VidsegDataModule"]["micro_batch"] == 8
