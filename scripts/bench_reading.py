"""Annotation reading time: the label-file scan cache, a large YouTube-VIS JSON, and the released Cityscapes-VPS
conversion, each next to its reference in the same run.

- scan cache: a synthetic raw-layout VIPSeg train split read three times, cache off, first (cold) and second read;
- YouTube-VIS: a generated train JSON of `--ytvis-videos` videos (1280x720, 30 frames, 3 tracks of uncompressed
  RLE circles) read by `ytvis.read`, next to `json.load` of the same file (the floor);
- Cityscapes-VPS release: `panoptic_map` of one 2048x1024 frame (half of the pixels in instances), next to the
  two PNG decodes it needs.

    python scripts/bench_reading.py [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vidseg.data.formats import cityscapes_vps, vipseg, ytvis
from vidseg.data.formats._cityscapes_vps_release import ColourTable, panoptic_map
from vidseg.data.formats.common import read_png
from vidseg.data.synthetic import SyntheticParams, generate


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def scan_cache(tmp: Path, videos: int) -> dict[str, float]:
    root = generate(
        "vipseg", tmp / "vipseg", SyntheticParams(height=720, width=1280, videos_train=videos, videos_val=1)
    )
    out = {}
    for name, setting in (("cache_off_s", "off"), ("first_read_s", str(tmp / "scans")), ("second_read_s", None)):
        if setting is not None:
            os.environ["VIDSEG_SCAN_CACHE"] = setting
        out[name] = _timed(lambda: vipseg.read(root, "train"))
    out["masks"] = sum(len(v.annotations) for v in vipseg.read(root, "train").videos)
    return out


def _counts(mask: np.ndarray) -> list[int]:
    flat = mask.ravel(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def ytvis_json(tmp: Path, videos: int) -> dict[str, float]:
    h, w, t = 720, 1280, 30
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:h, :w]
    shapes = [
        _counts((yy - rng.integers(100, 600)) ** 2 + (xx - rng.integers(100, 1100)) ** 2 < rng.integers(30, 150) ** 2)
        for _ in range(40)
    ]
    vids, anns = [], []
    for v in range(videos):
        vids.append(
            {
                "id": v + 1,
                "width": w,
                "height": h,
                "length": t,
                "file_names": [f"v{v:05d}/{f:05d}.jpg" for f in range(t)],
            }
        )
        for i in range(3):
            segs = [{"size": [h, w], "counts": shapes[(3 * v + i + f) % 40]} if f % 7 else None for f in range(t)]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "video_id": v + 1,
                    "category_id": 1 + i,
                    "iscrowd": 0,
                    "segmentations": segs,
                    "areas": [None] * t,
                    "bboxes": [None] * t,
                }
            )
    path = tmp / "ytvis" / "train" / "instances.json"
    path.parent.mkdir(parents=True)
    path.write_text(
        json.dumps(
            {"videos": vids, "annotations": anns, "categories": [{"id": i, "name": f"c{i}"} for i in range(1, 4)]}
        )
    )
    return {
        "json_mb": path.stat().st_size / 1e6,
        "json_load_s": _timed(lambda: json.loads(path.read_text())),
        "read_s": _timed(lambda: ytvis.read(tmp / "ytvis", "train", ann_file=path, check_frames=False)),
    }


def release_frame(tmp: Path, repeats: int = 5) -> dict[str, float]:
    cats = cityscapes_vps.default_categories()
    rng = np.random.default_rng(0)
    palette = np.array([c.color for c in cats] + [(0, 0, 0)])
    rgb = palette[np.kron(rng.integers(0, len(palette), (32, 64)), np.ones((32, 32), dtype=np.int64))]
    values = [0, 7, 0, 0, 0, 0, 11001, 11002, 13001, 13002, 13003, 24001]
    inst = np.kron(rng.choice(values, (32, 64)), np.ones((32, 32), dtype=np.int64))
    Image.fromarray(rgb.astype(np.uint8)).save(tmp / "c.png")
    Image.fromarray(inst.astype(np.uint16)).save(tmp / "i.png")
    table = ColourTable.of(cats, "bench")
    size = (1024, 2048)

    def convert() -> None:
        panoptic_map(tmp / "c.png", tmp / "i.png", size, table)

    def decode() -> None:
        read_png(tmp / "c.png", channels=3, size=size)
        read_png(tmp / "i.png", channels=1, size=size)

    convert()
    return {
        "panoptic_map_ms": 1000 * min(_timed(convert) for _ in range(repeats)),
        "png_decode_ms": 1000 * min(_timed(decode) for _ in range(repeats)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vipseg-videos", type=int, default=24)
    parser.add_argument("--ytvis-videos", type=int, default=3000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    saved = os.environ.get("VIDSEG_SCAN_CACHE")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        results = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "scan_cache": scan_cache(tmp, args.vipseg_videos),
            "ytvis": ytvis_json(tmp, args.ytvis_videos),
            "cityscapes_release": release_frame(tmp),
        }
    if saved is None:
        os.environ.pop("VIDSEG_SCAN_CACHE", None)
    print(json.dumps(results, indent=1))
    s, y, c = results["scan_cache"], results["ytvis"], results["cityscapes_release"]
    print(
        f"VIPSeg raw, {s['masks']} 720p masks: cache off {s['cache_off_s']:.2f} s, "
        f"first read {s['first_read_s']:.2f} s, "
        f"second {s['second_read_s']:.2f} s ({s['cache_off_s'] / s['second_read_s']:.0f}x)"
    )
    print(f"YouTube-VIS {y['json_mb']:.0f} MB JSON: read {y['read_s']:.1f} s, json.load alone {y['json_load_s']:.1f} s")
    print(
        f"Cityscapes-VPS release frame 2048x1024: {c['panoptic_map_ms']:.0f} ms, of which PNG decoding "
        f"{c['png_decode_ms']:.0f} ms"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
