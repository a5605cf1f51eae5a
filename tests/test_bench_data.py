"""scripts/bench_data.py runs end to end on a small dataset and writes the figures #2 asks for: the headline
`ratio` at the top level of its JSON, next to the pure-decode and per-worker rates it is made of, and the
switches that turn the slots, the worker heap thresholds, the RLE masks and the resize on the device off, and the
rate of two pure decoders at once (what the machine gives each of two workers), the same items on two threads of
one process, and the items' work with their frames decoded beforehand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench_data  # noqa: E402
from vidseg.data.video import open_frames  # noqa: E402


@pytest.mark.parametrize("switches", [[], ["--no-slots", "--no-worker-heap", "--no-rle-masks",
                                                "--no-device-resize"]])
def test_bench_data_writes_its_ratio(tmp_path: Path, switches: list[str]) -> None:
    out = tmp_path / "bench.json"
    result = bench_data.main(["--cache", str(tmp_path / "cache"), "--height", "96", "--width", "128", "--videos", "2",
                              "--frames", "8", "--clips", "6", "--repeats", "1", "--workers", "0", "2",
                              "--json", str(out), *switches])
    written = json.loads(out.read_text())
    assert list(written)[0] == "ratio" and written["ratio"] == pytest.approx(result["ratio"])
    rates = written["clips_per_s"]
    assert set(rates) == {"pure_decode", "pure_decode_x2", "dataset_items", "loader_w0", "loader_w2", "threads_x2",
                          "loader_decode_w2", "loader_decode_crop_w2"}
    for key in ("loader_decode", "loader_decode_crop"):
        assert written[f"ratio_{key}"] == pytest.approx(rates[f"{key}_w2"] / rates["pure_decode"])
    assert min(rates.values()) > 0 and written["cpu_ms_per_clip"]["pure_decode_x2"] > 0
    assert written["ratio"] == pytest.approx(rates["loader_w2"] / 2 / rates["pure_decode"])
    assert written["ratio_concurrent_decode"] == pytest.approx(rates["loader_w2"] / 2 / rates["pure_decode_x2"])
    clip = written["clip"]
    assert (clip["slots"], clip["worker_heap"], clip["rle_masks"], clip["device_resize"]) == ((not switches,) * 4)
    assert (written["resize_on_device_ms"] > 0) == (not switches)  # measured when the device does it
    assert written["cpu_ms_per_clip"]["loader_w2_workers"] > 0 and written["cpu_ms_per_clip"]["loader_w2_main"] > 0
    assert "loader_w0_main" not in written["cpu_ms_per_clip"]
    assert written["cpu_ms_per_clip"]["loader_w2_workers"] > 0 and written["machine"]["cores"] >= 1
    assert set(written["handover_copy_6mb_ms"]) == {"fresh_shared", "reused_slot"}
    assert written["worker_split_ms_per_clip"] is None  # only with --worker-split
    assert 0 < written["ratio_loader_floor"] <= 1.2  # spinning items: no pipeline reaches more than about 1
    assert written["cpu_ms_per_clip"]["loader_floor_main"] > 0
    # the same items on 2 threads of this process, and the items' work with their frames decoded beforehand
    assert written["clips_per_s"]["threads_x2"] > 0 and written["cpu_ms_per_clip"]["threads_x2"] > 0
    assert written["ratio_threads"] == pytest.approx(written["clips_per_s"]["threads_x2"] / rates["pure_decode"])
    cold, warm = written["non_decode_cpu_ms_per_clip_cold"], written["non_decode_cpu_ms_per_clip_warm"]
    assert cold == written["cpu_ms_per_clip"]["items_non_decode"] and cold > 0
    assert warm == written["cpu_ms_per_clip"]["items_non_decode_predecoded"] and warm > 0


def test_worker_split_adds_up_to_the_workers_cpu_time(tmp_path: Path) -> None:
    result = bench_data.main(["--cache", str(tmp_path / "cache"), "--height", "96", "--width", "128", "--videos", "2",
                              "--frames", "8", "--clips", "12", "--repeats", "1", "--workers", "2",
                              "--worker-split"])
    split = result["worker_split_ms_per_clip"]
    assert list(split) == ["read", "item_other", "stacking", "collate_handover_other", "loop", "other_threads"]
    assert split["read"] > 0 and split["item_other"] > 0 and split["stacking"] > 0
    assert split["collate_handover_other"] > 0
    assert min(split.values()) >= 0
    # the parts are the workers' CPU after start-up; their rusage also holds the start-up and the first clips
    assert sum(split.values()) <= result["cpu_ms_per_clip"]["loader_w2_workers"] * 1.05


def test_a_failing_concurrent_decoder_is_an_error_not_a_hang() -> None:
    import _bench_references

    class NoVideos:
        dataset = None  # rate_pure_decode reads ds.dataset.videos

        def __len__(self) -> int:
            return 3

    with pytest.raises(RuntimeError, match=r"2 processes at once failed: AttributeError"):
        _bench_references.rate_pure_decode_concurrent(NoVideos(), 3, 2)



def _small_dataset(tmp_path: Path):  # noqa: ANN202
    import argparse

    args = argparse.Namespace(cache=tmp_path / "cache", height=96, width=128, videos=2, frames=8, clips=6, seed=0,
                              no_resize=False, no_device_resize=False, no_rle_masks=False)
    return bench_data.build_dataset(args)


def test_items_on_threads_report_a_failing_item(tmp_path: Path) -> None:
    import _bench_references

    ds = _small_dataset(tmp_path)
    rate, ms = _bench_references.rate_threads(ds, 6, 2)
    assert rate > 0 and ms > 0
    ds.transform = None  # every item fails: an error naming it, not a hang
    with pytest.raises(RuntimeError, match=r"items on 2 threads failed: TypeError"):
        _bench_references.rate_threads(ds, 6, 2)


def test_the_warm_reference_decodes_each_clip_once(tmp_path: Path) -> None:
    import _bench_references

    ds = _small_dataset(tmp_path)
    reads: list[tuple[int, ...]] = []
    plain = ds.reader_factory

    class Counting:
        def __init__(self, reader) -> None:  # noqa: ANN001
            self.reader = reader

        def read(self, indices: list[int]):  # noqa: ANN202
            reads.append(tuple(indices))
            return self.reader.read(indices)

    ds.reader_factory = lambda source, backend: Counting(plain(source, backend))
    cold, warm = _bench_references.non_decode_cpu(ds, 6)
    assert cold > 0 and warm > 0
    assert 0 < len(reads) <= 6  # the first pass decodes, the second reads from memory
    assert ds[0].frames.shape[0] == 3  # the dataset itself is unchanged


def test_decode_items_hand_over_the_crop_of_the_frames(tmp_path: Path) -> None:
    import _bench_references

    ds = _small_dataset(tmp_path)  # 96x128 frames, 0.75 crops
    crops, empty = _bench_references.DecodeItems(ds, 4, crop=True), _bench_references.DecodeItems(ds, 4, crop=False)
    assert len(crops) == 4
    video, frames = crops.plan[1]
    sample = ds[1]
    assert list(frames) == sample.frame_indices  # the frames item 1 samples
    crop = crops[1]
    assert crop.shape == (3, 3, 72, 96) and crop.dtype == torch.uint8
    full = torch.from_numpy(open_frames(video.frames).read(frames)).permute(0, 3, 1, 2)
    assert torch.equal(crop, full[:, :, :72, :96])
    assert empty[1].numel() == 0
    assert _bench_references.rate_loader_decode(ds, 4, 2, crop=True) > 0
