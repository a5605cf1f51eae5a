"""scripts/bench_jpeg.py decodes the same JPEG frames with vidseg's reader and with PIL, checks the pixels are the
same, and writes CPU ms per frame and the speed against the old PIL path."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench_jpeg  # noqa: E402


@pytest.mark.parametrize("heap", [[], ["--default-heap"]])
def test_bench_jpeg_writes_its_figures(tmp_path: Path, heap: list[str]) -> None:
    out = tmp_path / "jpeg.json"
    result = bench_jpeg.main(["--cache", str(tmp_path / "cache"), "--height", "96", "--width", "128", "--frames", "5",
                              "--repeats", "2", "--json", str(out), *heap])
    written = json.loads(out.read_text())
    assert set(written["cpu_ms_per_frame"]) == {"pil_convert", "pil_no_copy", "torchvision", "vidseg_reader",
                                                "vidseg_reader_into_clip"}
    assert min(written["cpu_ms_per_frame"].values()) > 0 and written["frames"] == 5
    assert written["size"] == [96, 128, 3] and written["heap"] == ("default" if heap else "fixed")
    assert written["speedup_vs_pil_convert"]["pil_convert"] == pytest.approx(1.0)
    assert result["cpu_ms_per_frame"] == written["cpu_ms_per_frame"]
