"""VidsegDataModule: the training loader continues at the checkpoint's micro-batch, takes rank/world/accumulation
from the trainer, forwards epochs to the clip datasets; validation videos are sharded over ranks. Dataset specs
(`data.datasets.<name>`) are checked: wrong keys, a missing format or task, unknown tasks, formats and reader
options are errors naming the option; every shipped config passes."""

from __future__ import annotations

import inspect
import pickle
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from vidseg.data.datamodule import RankShard, VidsegDataModule
from vidseg.data.dataset_spec import EVAL_KEYS, SPEC_KEYS
from vidseg.data.formats import get_format
from vidseg.utils.launch import default_cache
from vidseg.utils.run import build_datamodule

CONF = Path(__file__).resolve().parents[2] / "conf"
SRC = Path(__file__).resolve().parents[2] / "src" / "vidseg"


def _datamodule(overrides: list[str] | None = None) -> VidsegDataModule:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["task=vos", "run_name=t", "paths.output_dir=/tmp", "data.batch_size=2",
                                          f"paths.cache_dir={default_cache()}", *(overrides or [])])
    dm = build_datamodule(cfg, ["vos"])
    dm.prepare_data()
    return dm


def _fake_trainer(rank: int = 0, world: int = 1, epoch: int = 0, accumulate: int = 1, processed: int = 0) -> Any:
    progress = SimpleNamespace(total=SimpleNamespace(processed=processed))
    return SimpleNamespace(global_rank=rank, world_size=world, current_epoch=epoch,
                           accumulate_grad_batches=accumulate,
                           fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)))


def test_loader_resumes_at_the_checkpoint_micro_batch() -> None:
    dm = _datamodule(["data.steps_per_epoch=4"])
    dm.trainer = _fake_trainer(accumulate=2, epoch=1, processed=11)
    state = dm.state_dict()
    assert state == {"micro_batch": 11, "epoch": 1}
    fresh = _datamodule(["data.steps_per_epoch=4"])
    fresh.trainer = _fake_trainer(accumulate=2, epoch=1)
    fresh.load_state_dict(state)
    loader = fresh.train_dataloader()
    sampler = fresh.batch_sampler
    assert sampler.accumulate == 2 and len(sampler) == 8 and sampler.epoch == 1
    batches = list(loader)
    assert len(batches) == 16 - 11  # the rest of epoch 1
    record = fresh.train_records["syn_davis"]
    spv = fresh.samples_per_video
    for m, batch in zip(range(11, 16), batches, strict=True):
        expected = [record.videos[i // spv].video_id for i in sampler.indices_of(m)]
        assert [s.video_id for s in batch.samples] == expected
        assert batch.task == "vos" and batch.dataset == "syn_davis"


def test_rank_and_world_come_from_the_trainer_and_epochs_reach_the_clip_datasets() -> None:
    dm = _datamodule()
    dm.trainer = _fake_trainer(rank=1, world=2)
    loader = dm.train_dataloader()
    sampler = dm.batch_sampler
    assert (sampler.rank, sampler.world_size) == (1, 2)
    assert all(i % 2 == 1 for i in sampler.indices_of(0))
    sampler.sampler.set_epoch(3)  # what Lightning calls each epoch
    assert loader.dataset.datasets[0].epoch == 3
    collate = pickle.loads(pickle.dumps(loader.collate_fn))  # spawn/forkserver workers receive it pickled
    assert collate.tasks == {"syn_davis": "vos"}


def test_validation_videos_are_sharded_over_ranks() -> None:
    dm = _datamodule()
    per_rank = []
    for rank in range(3):
        dm.trainer = _fake_trainer(rank=rank, world=3)
        (loader,) = dm.val_dataloader()
        per_rank.append([v.index for v in loader])
    n = len(dm.val_records["syn_davis"].videos)
    assert sorted(i for r in per_rank for i in r) == list(range(n))
    assert per_rank[1] == list(range(1, n, 3))


def test_max_val_videos_caps_each_dataset() -> None:
    dm = _datamodule(["data.max_val_videos=2"])
    (loader,) = dm.val_dataloader()
    assert len(loader) == 2


@pytest.mark.parametrize(("length", "world"), [(10, 3), (2, 4), (0, 2)])
def test_rank_shard_partitions_without_repeats(length: int, world: int) -> None:
    shards = [list(RankShard(length, r, world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(length))
    assert [len(RankShard(length, r, world)) for r in range(world)] == [len(s) for s in shards]


def test_worker_loaders_use_slots_and_fixed_heap_thresholds_and_bad_options_are_named() -> None:
    from vidseg.data.handover import SlotHandover

    dm = _datamodule(["data.num_workers=2", "data.handover_slots=3", "data.steps_per_epoch=2",
                      "data.resize_on_device=true"])
    loader = dm.train_dataloader()
    assert isinstance(loader.collate_fn, SlotHandover) and loader.collate_fn.pool.slots_per_worker == 3
    assert (loader.worker_init_fn.mmap_threshold_mb, loader.worker_init_fn.trim_threshold_mb) == (64, 256)
    batches = list(loader)
    assert len(batches) == 2 and loader.collate_fn.pool.slots_sent == 2
    for batch in batches:  # crops come back with what the device still has to do to them (data.resize_on_device)
        assert batch.device_resize is not None and batch.device_resize.shape == (2, 5)
        done = batch.to("cpu")
        assert done.frames.shape[-2:] == done.pad_mask.shape[-2:] == done.samples[0].masks.shape[-2:]
        assert done.device_resize is None
    assert not isinstance(_datamodule(["data.handover_slots=0", "data.num_workers=2"]).train_dataloader().collate_fn,
                          SlotHandover)
    plain = _datamodule(["data.resize_on_device=false", "data.steps_per_epoch=1"]).train_dataloader()
    assert next(iter(plain)).device_resize is None
    with pytest.raises(ValueError, match="data.resize_on_device must be true, false or auto"):
        _datamodule(["data.resize_on_device=1"])
    with pytest.raises(ValueError, match="data.handover_slots must be an int >= 0"):
        _datamodule(["data.handover_slots=-1"])
    with pytest.raises(ValueError, match="data.handover_slot_mb must be positive"):
        _datamodule(["data.handover_slot_mb=0"])
    with pytest.raises(ValueError, match="data.worker_mmap_threshold_mb .*mmap_threshold_mb must be a positive"):
        _datamodule(["data.worker_mmap_threshold_mb=-4"])


def test_resize_on_device_auto_follows_the_trainers_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    dm = _datamodule()  # data.resize_on_device: auto
    dm.setup("fit")
    assert dm.resize_on_device == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dm.device_resizes() is False  # no trainer, no CUDA: the workers resize
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dm.device_resizes() is True
    for device, expected in (("cpu", False), ("cuda:0", True)):
        trainer = _fake_trainer()
        trainer.strategy = SimpleNamespace(root_device=torch.device(device))
        dm.trainer = trainer
        assert dm.device_resizes() is expected
        assert dm._clip_dataset(next(iter(dm.specs))).transform.resize_on_device is expected
    assert _datamodule(["data.resize_on_device=false"]).device_resizes() is False


# ------------------------------------------------------------------ dataset specs
def _spec(drop: tuple[str, ...] = (), **changes: Any) -> dict[str, Any]:
    """conf/data/synthetic_vos.yaml's spec with `changes` and without the keys `drop`."""
    spec = OmegaConf.to_container(OmegaConf.load(CONF / "data" / "synthetic_vos.yaml"))["datasets"]["syn_davis"]
    return {k: v for k, v in {**spec, **changes}.items() if k not in drop}


@pytest.mark.parametrize(("key", "closest"), [("val_splt", "val_split"), ("optons", "options")])
def test_misspelled_spec_key_is_named_with_the_closest_key(key: str, closest: str) -> None:
    with pytest.raises(ValueError, match=rf"data\.datasets\.syn_davis\.{key}: unknown dataset option; did you mean "
                                         rf"'{closest}'\?"):
        _datamodule([f"+data.datasets.syn_davis.{key}={{}}"])


def test_spec_without_format_is_named() -> None:
    with pytest.raises(ValueError, match=r"data\.datasets\.d\.format is missing: .*ytvis, davis"):
        VidsegDataModule({"d": _spec(drop=("format",))}, tasks=["vos"])


def test_spec_without_task_takes_the_runs_single_task_else_is_named() -> None:
    dm = VidsegDataModule(OmegaConf.create({"d": _spec(drop=("task",))}), tasks=["vos"])  # a DictConfig, as well
    assert dm.task_of("d") == "vos"
    for tasks in (None, ["vos", "vis"]):
        with pytest.raises(ValueError, match=r"data\.datasets\.d\.task is missing: set one of vis, vss, vps"):
            VidsegDataModule({"d": _spec(drop=("task",))}, tasks=tasks)


def test_unknown_task_is_named() -> None:
    with pytest.raises(ValueError, match=r"data\.datasets\.d\.task: unknown task 'viss'; did you mean .*known: vis, "):
        VidsegDataModule({"d": _spec(task="viss"), "e": _spec()}, tasks=["vos"])  # even if this run skips it


def test_unknown_format_is_named() -> None:
    with pytest.raises(ValueError, match=r"data\.datasets\.d\.format: unknown dataset format 'ytvs'; did you mean "
                                         r"'ytvos'\?"):
        VidsegDataModule({"d": _spec(format="ytvs")}, tasks=["vos"])


@pytest.mark.parametrize("fmt", ["ytvis", "davis", "ytvos", "burst", "kitti_step", "cityscapes_vps", "vipseg", "vspw",
                                 "video"])
def test_unknown_reader_option_is_named_with_the_readers_options(fmt: str) -> None:
    params = list(inspect.signature(get_format(fmt).read).parameters.values())[2:]
    accepted = [p.name for p in params if p.kind is not p.VAR_KEYWORD]
    assert accepted
    with pytest.raises(ValueError, match=rf"data\.datasets\.d\.options\.ann_fil: unknown option of format '{fmt}'"
                                         rf".*\(valid: {', '.join(accepted)}\)") as err:
        VidsegDataModule({"d": _spec(format=fmt, options={"ann_fil": "x"})}, tasks=["vos"])  # before any read
    assert ("did you mean 'ann_file'" in str(err.value)) == ("ann_file" in accepted)


@pytest.mark.parametrize(("block", "key", "closest"), [("eval", "shrt", "short"),
                                                       ("synthetic", "videos_trian", "videos_train")])
def test_misspelled_eval_or_synthetic_key_is_named(block: str, key: str, closest: str) -> None:
    with pytest.raises(ValueError, match=rf"data\.datasets\.d\.{block}\.{key}: unknown .*did you mean '{closest}'"):
        VidsegDataModule({"d": _spec(**{block: {key: 1}})}, tasks=["vos"])


def test_training_without_sampler_is_named() -> None:
    dm = _datamodule(["~data.datasets.syn_davis.sampler"])  # evaluation needs none
    with pytest.raises(ValueError, match=r"data\.datasets\.syn_davis\.sampler is missing: clip sampler"):
        dm.train_dataloader()


def _shipped_configs() -> list[list[str]]:
    data = [["task=multi", f"data={p.stem}"] for p in sorted((CONF / "data").glob("*.yaml"))]
    experiments = [[f"experiment={p.stem}"] for p in sorted((CONF / "experiment").glob("*.yaml"))]
    return data + experiments + [[f"debug={p.stem}"] for p in sorted((CONF / "debug").glob("*.yaml"))]


@pytest.mark.parametrize("overrides", _shipped_configs(), ids=lambda o: o[-1])
def test_every_shipped_dataset_spec_validates(overrides: list[str]) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["run_name=t", "paths.output_dir=/tmp", f"paths.cache_dir={default_cache()}",
                                          *overrides])
    if OmegaConf.is_missing(cfg.data, "root"):  # official layouts: data.root=??? until set
        cfg.data.root = "/datasets"
    dm = build_datamodule(cfg, list(cfg.tasks))  # validates every data.datasets entry; reads nothing
    assert dm.specs and set(dm.specs) <= set(cfg.data.datasets)


def test_spec_keys_are_the_keys_the_code_reads() -> None:
    """SPEC_KEYS (what the validator accepts) against every spec key the datamodule, evaluation and inference read."""
    code = "".join((SRC / f).read_text() for f in ("data/datamodule.py", "evaluate.py", "inference/loading.py"))
    read = set(re.findall(r'\b(?:spec|specs\[\w+\]|v)(?:\.get\(|\[)"(\w+)"', code))
    read |= set(re.findall(r'require\(\w+, \w+, "(\w+)"\)', code))
    read |= set(re.findall(r'\*\*dict\(spec\.get\("(\w+)"\)', code))
    assert read == set(SPEC_KEYS)
    assert set(re.findall(r'\bev\.get\("(\w+)"', code)) == set(EVAL_KEYS)
