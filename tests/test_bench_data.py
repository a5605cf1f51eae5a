"""scripts/bench_data.py runs end to end on a small dataset and writes the figures #2 asks for: the headline
`ratio` at the top level of its JSON, next to the pure-decode and per-worker rates it is made of, and the
switches that turn the slots, the worker heap thresholds, the RLE masks and the resize on the device off, and the
rate of two pure decoders at once (what the machine gives each of two workers)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench_data  # noqa: E402


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
    assert set(rates) == {"pure_decode", "pure_decode_x2", "dataset_items", "loader_w0", "loader_w2"}
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

    with pytest.raises(RuntimeError, match=r"2 processes at once failed: AttributeError"):
        _bench_references.rate_pure_decode_concurrent(NoVideos(), 3, 2)
