"""JPEG frame decoding: vidseg's frame reader (`vidseg.data.video.read_image_rgb`, simplejpeg since session 16),
into a fresh array and into a clip's array as `ImageFolderReader` uses it, against PIL as the reader used it before
session 15 (`np.asarray(im.convert("RGB"))`), PIL without the `convert` copy and torchvision's `decode_jpeg` (the
reader of session 15), on the same files, with the same pixels checked.

Writes (once, cached) `--frames` synthetic 854x480 JPEG frames (vidseg's generator, PIL quality 90), then decodes
all of them with each reader in `--repeats` interleaved rounds and prints CPU ms per frame (median over rounds) and
each reader's speed against the old PIL path. By default this process fixes its glibc heap thresholds as
DataLoader workers do (`data.worker_memory`); `--default-heap` keeps glibc's adaptive ones (the training process,
evaluation and `num_workers=0`), where each fresh frame buffer also costs page faults.

    python scripts/bench_jpeg.py --json bench_jpeg.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from vidseg.data.synthetic import ensure_synthetic
from vidseg.data.video import read_image_rgb
from vidseg.data.worker_memory import fix_malloc_thresholds


def pil_convert(path: Path) -> np.ndarray:
    """The frame reader before session 15."""
    with Image.open(path) as im:
        im.load()
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def pil_no_copy(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        return np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)


def torchvision_decode(path: Path) -> np.ndarray:
    """The frame reader of session 15 (torchvision's libjpeg-turbo decoder)."""
    data = torch.from_numpy(np.fromfile(path, dtype=np.uint8))
    return decode_jpeg(data, mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()


class IntoClip:
    """`read_image_rgb` decoding each frame into a 3-frame clip array in turn, as `ImageFolderReader.read` does
    (one clip array per 3 frames: the array's allocation is paid as in the reader)."""

    def __init__(self, frame_shape: tuple[int, ...]) -> None:
        self.frame_shape = frame_shape
        self.clip, self.k = np.empty((3, *frame_shape), np.uint8), 0

    def __call__(self, path: Path) -> np.ndarray:
        if self.k == len(self.clip):
            self.clip, self.k = np.empty((3, *self.frame_shape), np.uint8), 0
        self.k += 1
        return read_image_rgb(path, out=self.clip[self.k - 1])


READERS: dict[str, Callable[[Path], np.ndarray]] = {
    "pil_convert": pil_convert, "pil_no_copy": pil_no_copy, "torchvision": torchvision_decode,
    "vidseg_reader": read_image_rgb,
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "vidseg" / "bench")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=854)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--default-heap", action="store_true", help="keep glibc's adaptive heap thresholds")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if not args.default_heap:
        fix_malloc_thresholds(64, 256)
    root = ensure_synthetic("ytvis", args.cache, height=args.height, width=args.width, videos_train=6, videos_val=1,
                            frames=36)
    paths = sorted((root / "train" / "JPEGImages").rglob("*.jpg"))[: args.frames]
    if not paths:
        raise SystemExit(f"no JPEG frames under {root / 'train' / 'JPEGImages'}")
    reference = [pil_convert(path) for path in paths]
    readers = {**READERS, "vidseg_reader_into_clip": IntoClip(reference[0].shape)}
    for name, read in readers.items():  # the same pixels, or the comparison means nothing
        for path, want in zip(paths, reference, strict=True):
            got = read(path)
            if got.shape != want.shape or not np.array_equal(got, want):
                raise SystemExit(f"{name} decodes {path} differently from PIL")
    rounds: dict[str, list[float]] = {name: [] for name in readers}
    for _ in range(args.repeats):
        for name, read in readers.items():
            start = time.process_time()
            for path in paths:
                read(path)
            rounds[name].append(1000.0 * (time.process_time() - start) / len(paths))
    ms = {name: statistics.median(v) for name, v in rounds.items()}
    result = {
        "cpu_ms_per_frame": ms,
        "speedup_vs_pil_convert": {name: ms["pil_convert"] / v for name, v in ms.items()},
        "rounds": rounds,
        "frames": len(paths), "size": list(reference[0].shape), "heap": "default" if args.default_heap else "fixed",
    }
    print(f"{len(paths)} JPEG frames {reference[0].shape[1]}x{reference[0].shape[0]}, {args.repeats} rounds, "
          f"{result['heap']} heap thresholds; identical pixels")
    for name, v in ms.items():
        print(f"{name:<16}{v:>8.3f} ms/frame  {result['speedup_vs_pil_convert'][name]:.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
