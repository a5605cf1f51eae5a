"""2-process DDP on CPU (gloo) with `task=multi`: every rank trains the same (task, dataset) group on every
micro-batch (all_gather), ranks read disjoint samples, gradient accumulation skips the all-reduce on non-final
micro-steps (grads differ across ranks there and agree after the final one), and the heads of the tasks a
step does not use never break DDP (every parameter gets a gradient, find_unused_parameters off); a non-finite
loss on one rank makes every rank skip that micro-batch, and gradients stay in sync."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vidseg.utils.audit import read_audit, read_audit_end
from vidseg.utils.launch import QUICK, run_train

NAN = {3: 1, 4: 0, 6: 0, 7: 1}  # micro-batch -> the one rank whose loss is NaN there


@pytest.mark.slow
def test_two_process_ddp_multi_task(tmp_path: Path) -> None:
    run, audit = tmp_path / "run", tmp_path / "audit"
    faults = []
    for m, rank in NAN.items():
        faults += [f"+callbacks.nan{m}._target_=vidseg.utils.faults.InjectNonFinite",
                   f"+callbacks.nan{m}.micro_batches=[{m}]", f"+callbacks.nan{m}.rank={rank}"]
    run_train([
        *QUICK, "task=multi", "trainer=ddp", "trainer.devices=2", "data.global_batch=4", "data.chunk=1",
        "trainer.max_steps=4", "validate=false", "checkpoint.every_n_steps=4", f"hydra.run.dir={run}",
        "+callbacks.audit._target_=vidseg.utils.audit.SamplerAudit", f"+callbacks.audit.dirpath={audit}", *faults,
    ], timeout=900, log=tmp_path / "train.log")
    records = read_audit(audit)
    assert sorted(records) == [0, 1]
    # global batch 4 = 1 clip × 2 ranks × 2 micro-batches: 4 steps are 8 micro-batches per rank
    assert [r["micro"] for r in records[0]] == [r["micro"] for r in records[1]] == list(range(8))
    groups_seen = set()
    for r0, r1 in zip(records[0], records[1], strict=True):
        m = r0["micro"]
        assert r0["groups"] == r1["groups"]  # all_gather of the per-micro-batch group: identical everywhere
        assert len(set(r0["groups"])) == 1, r0
        assert r0["dataset"] == r1["dataset"] and r0["sampler_group"] == r0["groups"][0]
        assert r0["step"] == r1["step"] == m // 2
        assert len(set(r0["param_sums"])) == 1  # the ranks' parameters never drift apart
        final = m % 2 == 1
        assert r0["sync"] is r1["sync"] is final  # Lightning's no_sync on the non-final micro-step
        g0, g1 = r0["grad_sums"]
        if final:
            assert g0 == g1  # all-reduced
        elif m in NAN:
            assert g0 == g1 == 0.0  # the skipped micro-batch contributed a zero loss on both ranks
        else:
            assert g0 != g1  # local gradients only
        assert r0["grads_missing"] == r1["grads_missing"] == 0
        groups_seen.add(r0["dataset"])
    assert len(groups_seen) >= 2  # the steps did switch between tasks
    sums = [r["param_sums"][0] for r in records[0]] + [read_audit_end(audit)[0][0]["param_sums"][0]]
    assert sums[2] != sums[0] and sums[4] != sums[2] and sums[6] != sums[4]  # steps 0-2 updated the model
    assert sums[8] == sums[6]  # step 3: every micro-batch non-finite on some rank, no update at all
    idx0 = {i for r in records[0] for i in r["indices"]}
    idx1 = {i for r in records[1] for i in r["indices"]}
    assert idx0 and idx1 and not idx0 & idx1
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 4
    assert state["VidsegDataModule"]["micro_batch"] == 8
    assert state["vidseg"]["skipped_steps"] == len(NAN)


@pytest.mark.slow
def test_one_device_ddp_trains_every_task_and_validates(tmp_path: Path) -> None:
    """`trainer=ddp` on one device (as `trainer=gpu` on a one-GPU machine): Lightning still wraps the model in
    DDP, whose reducer needs every parameter in each step's loss, and the metrics sync through the process
    group; a world-size-1 shortcut once left the other tasks' heads out and stopped at the second step."""
    run = tmp_path / "run"
    run_train([*QUICK, "task=multi", "trainer=ddp", "trainer.devices=1", "trainer.max_steps=6",
               "data.max_val_videos=1", f"hydra.run.dir={run}"], timeout=900, log=tmp_path / "train.log")
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"vis", "vss", "vps", "vos", "pet"} <= set(metrics), sorted(metrics)
    assert 0.0 <= metrics["vos"]["J&F-Mean"] <= 1.0
