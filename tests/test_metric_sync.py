"""Validation metrics keep their states on the CPU, so under NCCL (GPU DDP, `trainer=gpu`) they must sync over a
gloo group: torchmetrics' all_gather of a CPU state over NCCL fails ("No backend type associated with device
type cpu"). `metric_sync_group` makes that group; with gloo as the default backend it leaves the default."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist

from vidseg import module as module_lib
from vidseg.data.records import Category
from vidseg.metrics.miou import SemanticMIoU


@pytest.fixture
def one_rank_gloo(tmp_path) -> Iterator[None]:
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_no_group_outside_distributed_runs() -> None:
    assert not dist.is_initialized()
    assert module_lib.metric_sync_group() is None


@pytest.mark.parametrize("backend", ["gloo", "mpi", "cpu:gloo,cuda:nccl"])
def test_backends_that_move_cpu_tensors_keep_the_default_group(monkeypatch, backend: str) -> None:
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda *a: backend)
    monkeypatch.setattr(dist, "new_group", lambda **kw: pytest.fail(f"made a group for {backend}"))
    assert module_lib.metric_sync_group() is None


@pytest.mark.filterwarnings("ignore:The ``compute`` method")  # states set by hand, not by update()
def test_nccl_gets_a_gloo_group_and_a_metric_syncs_over_it(monkeypatch, one_rank_gloo) -> None:
    made = []
    real_new_group = dist.new_group

    def new_group(**kw):
        made.append(kw)
        return real_new_group(**kw)

    monkeypatch.setattr(dist, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(dist, "new_group", new_group)
    group = module_lib.metric_sync_group()
    assert made == [{"backend": "gloo"}] and group is not None
    assert dist.get_world_size(group) == 1

    groups_used = []
    real_all_gather = dist.all_gather

    def all_gather(tensor_list, tensor, group=None, async_op=False):
        groups_used.append(group)
        return real_all_gather(tensor_list, tensor, group=group, async_op=async_op)

    monkeypatch.setattr(dist, "all_gather", all_gather)
    cats = [Category(id=i, name=f"c{i}") for i in (1, 2)]
    metric = SemanticMIoU(cats)
    metric.process_group = group  # what VidsegModule.on_validation_epoch_start does
    metric.confusion += torch.tensor([[3, 1], [0, 4]])
    synced = metric.compute()
    assert groups_used and all(g is group for g in groups_used)  # the states went through the gloo group
    assert synced["mIoU"] == pytest.approx((3 / 4 + 4 / 5) / 2)
    assert metric._is_synced is False  # unsynced again after compute (state back to the local one)


def test_a_metric_group_passes_its_process_group_to_every_member() -> None:
    from vidseg.metrics.stq import STQ
    from vidseg.metrics.vpq import VPQ
    from vidseg.tasks.base import MetricGroup

    cats = [Category(id=1, name="thing", isthing=True), Category(id=2, name="stuff", isthing=False)]
    group = MetricGroup({"vpq": VPQ(categories=cats), "stq": STQ(categories=cats)})
    marker = object()
    group.process_group = marker
    assert group.process_group is marker
    assert all(m.process_group is marker for m in group.metrics.values())
