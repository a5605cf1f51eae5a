"""Synthetic datasets in every official format: moving shapes over stuff bands (see `synthetic_scene`).

`generate(format, out)` renders train/val scenes, labels them with the format's vocabulary (defined here)
and writes them through `vidseg.data.formats.get_format(format).write_ground_truth`. `ensure_synthetic`
generates once into a cache folder keyed by format + parameters (temp folder + atomic rename) and reuses
it; training configs call it when no dataset path is set.

    python -m vidseg.data.synthetic --format ytvis --out /tmp/syn [--seed 0 --height 96 --width 96
        --videos-train 24 --videos-val 8 --frames T --class-colours]   # --format all: one sub-folder per format

Same arguments -> byte-identical annotation files (frames/videos too, given the same library versions).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from vidseg.data.formats.vps_common import CITYSCAPES_CLASSES, cityscapes_categories
from vidseg.data.records import IGNORE_LABEL, Category, GroundTruthVideo, Point
from vidseg.data.synthetic_scene import SHAPES, STUFF, SceneConfig, SyntheticScene, exemplar_point, make_scene

GENERATOR_VERSION = 1  # bump when the output of a given seed changes (invalidates caches)
FORMAT_VERSIONS = {"cityscapes_vps": 1}  # bumped when only that format's output changes (1: cls/ + inst/ added)
SPLITS = ("train", "val")
MANIFEST = "vidseg_synthetic.json"

CITYSCAPES_STUFF = {"road": 0, "building": 2, "vegetation": 8, "sky": 10}
BURST_COMMON_IDS = (4, 13)  # in BURST's common-class list (formats.md §8.6)
BURST_UNCOMMON_IDS = (1, 2, 3)  # neither common nor distractor


@dataclass(frozen=True)
class Vocabulary:
    """How a format labels a scene: categories (vocabulary order), shape -> category, stuff -> category
    (None: instance-only format, background = IGNORE_LABEL), crowd patch category, and scene options."""

    categories: tuple[Category, ...]
    shape_category: dict[str, int]
    stuff_category: dict[str, int] | None = None
    crowd_category: int | None = None
    scene: dict[str, Any] = field(default_factory=dict)
    write_options: dict[str, Any] = field(default_factory=dict)


def _shape_vocab(ids: Sequence[int], names: Sequence[str] = SHAPES) -> tuple[Category, ...]:
    return tuple(Category(id=i, name=n, isthing=True) for i, n in zip(ids, names))


def _cityscapes_categories(things: Sequence[int]) -> tuple[Category, ...]:
    """The 19 Cityscapes train ids without colours (the formats that store colours have their own)."""
    return tuple(Category(id=i, name=n, isthing=i in things) for i, (n, _) in enumerate(CITYSCAPES_CLASSES))


def _vocab_124(things: set[int], named: dict[int, str], isthing_all: bool | None = None) -> tuple[Category, ...]:
    """A 124-class vocabulary (ids 0..123): real-looking names for the classes used, synthetic otherwise."""
    cats = []
    for i in range(124):
        thing = (i in things) if isthing_all is None else isthing_all
        cats.append(Category(id=i, name=named.get(i, f"{'thing' if thing else 'stuff'}_{i:03d}"), isthing=thing))
    return tuple(cats)


VIPSEG_THINGS = set(range(60, 118))  # 58 thing classes (person = 60, as in VIPSeg's 0-based ids)
VIPSEG_USED = {
    60: "person", 61: "car", 62: "bicycle", 63: "ball", 64: "sign",
    5: "sky", 6: "building", 7: "tree", 8: "road",
}  # fmt: skip
VSPW_USED = {
    0: "wall", 1: "sky", 2: "building", 3: "tree", 4: "road",
    40: "person", 41: "car", 42: "bicycle", 43: "ball", 44: "sign",
}  # fmt: skip


def vocabulary(fmt: str) -> Vocabulary:
    """The synthetic vocabulary of format `fmt` (see the module docstring of each format for its ids)."""
    shapes_1k = dict(zip(SHAPES, range(1, len(SHAPES) + 1)))
    if fmt in ("ytvis", "video"):
        return Vocabulary(_shape_vocab(range(1, len(SHAPES) + 1)), shapes_1k)
    if fmt == "ytvos":  # YouTube-VOS stores names only; its reader numbers the names in sorted order
        names = sorted(SHAPES)
        return Vocabulary(_shape_vocab(range(1, len(names) + 1), names), {n: names.index(n) + 1 for n in SHAPES})
    if fmt == "davis":  # DAVIS has no classes; all objects visible in frame 0 (N = max id of frame 0)
        return Vocabulary(_shape_vocab(range(1, len(SHAPES) + 1)), shapes_1k, scene={"all_visible_at_start": True})
    if fmt == "burst":
        ids = (*BURST_COMMON_IDS, *BURST_UNCOMMON_IDS)
        cats = tuple(sorted(_shape_vocab(ids), key=lambda c: c.id))
        return Vocabulary(cats, dict(zip(SHAPES, ids)))
    if fmt == "kitti_step":
        shape_cat = {"disc": 11, "ring": 11, "cross": 11, "square": 13, "triangle": 13}
        return Vocabulary(
            _cityscapes_categories((11, 13)), shape_cat, CITYSCAPES_STUFF, crowd_category=13, scene={"crowd": True}
        )
    if fmt == "cityscapes_vps":
        shape_cat = {"disc": 11, "triangle": 12, "square": 13, "ring": 17, "cross": 18}
        # the GroundTruthVideo holds the annotated frames only: exactly 6 per video (named 5k in the writer)
        # coloured categories: the GT is also written as released (cls/ + inst/), read by colour
        return Vocabulary(
            tuple(cityscapes_categories(range(11, 19))), shape_cat, CITYSCAPES_STUFF, scene={"num_frames": 6},
            write_options={"release_labels": True},
        )  # fmt: skip
    if fmt == "vipseg":
        shape_cat = dict(zip(SHAPES, (60, 61, 62, 63, 64)))
        stuff_cat = {"sky": 5, "building": 6, "vegetation": 7, "road": 8}
        return Vocabulary(_vocab_124(VIPSEG_THINGS, VIPSEG_USED), shape_cat, stuff_cat)
    if fmt == "vspw":  # semantic only; a void patch (VSPW 0 "others" / 255) in every other video
        shape_cat = dict(zip(SHAPES, (40, 41, 42, 43, 44)))
        stuff_cat = {"sky": 1, "building": 2, "vegetation": 3, "road": 4}
        return Vocabulary(_vocab_124(set(), VSPW_USED, isthing_all=False), shape_cat, stuff_cat, scene={"void": True})
    raise ValueError(f"no synthetic vocabulary for format {fmt!r}; known: {FORMATS}")


FORMATS = ("ytvis", "davis", "ytvos", "burst", "kitti_step", "cityscapes_vps", "vipseg", "vspw", "video")


def to_ground_truth(scene: SyntheticScene, vocab: Vocabulary) -> GroundTruthVideo:
    """Label a scene with a format's vocabulary: semantic maps (stuff bands, track classes, crowd, void),
    track categories and BURST-style exemplar points (distance-transform peak at first appearance)."""
    h, w = scene.stuff_map.shape
    if vocab.stuff_category is None:
        background = np.full((h, w), IGNORE_LABEL, dtype=np.int32)
    else:
        lut = np.array([vocab.stuff_category[name] for name in STUFF], dtype=np.int32)
        background = lut[scene.stuff_map]
    if vocab.crowd_category is not None:
        background = np.where(scene.crowd_mask, vocab.crowd_category, background).astype(np.int32)
    background = np.where(scene.void_mask, IGNORE_LABEL, background).astype(np.int32)
    track_categories = {tid: vocab.shape_category[shape] for tid, shape in scene.track_shapes.items()}
    track_lut = np.zeros(max(track_categories, default=0) + 1, dtype=np.int32)
    for tid, cid in track_categories.items():
        track_lut[tid] = cid
    semantic_maps = [np.where(m > 0, track_lut[m], background).astype(np.int32) for m in scene.instance_maps]
    points: dict[int, tuple[int, Point]] = {}
    for tid in track_categories:
        t = next(t for t, m in enumerate(scene.instance_maps) if (m == tid).any())
        x, y = exemplar_point(scene.instance_maps[t] == tid)
        points[tid] = (t, Point(float(x), float(y)))
    return GroundTruthVideo(
        video_id=scene.video_id,
        frames=scene.frames,
        instance_maps=[m.astype(np.int32) for m in scene.instance_maps],
        semantic_maps=semantic_maps,
        track_categories=track_categories,
        points=points,
        fps=scene.fps,
    )


@dataclass(frozen=True)
class SyntheticParams:
    """Everything that determines a synthetic dataset (the cache key)."""

    seed: int = 0
    height: int = 96
    width: int = 96
    videos_train: int = 24
    videos_val: int = 8
    frames: int | None = None  # None: 12..24 frames per video
    class_colours: bool = False  # objects in their class's colour family (as real categories have a typical
    # appearance); False: random colours, so the class is the shape alone
    # relative frequencies of 1, 2, ..., K objects per video; None: uniform over 1..5 (the scene default)
    object_counts: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.object_counts is not None:  # Hydra passes a ListConfig; the cache key needs plain floats
            counts = tuple(float(c) for c in self.object_counts)
            if not counts or min(counts) < 0 or sum(counts) <= 0:
                raise ValueError(f"synthetic object_counts must be non-negative with a positive sum, got {counts}")
            object.__setattr__(self, "object_counts", counts)

    def num_videos(self, split: str) -> int:
        return self.videos_train if split == "train" else self.videos_val


def scene_config(fmt: str, params: SyntheticParams) -> SceneConfig:
    base = SceneConfig(height=params.height, width=params.width, num_frames=params.frames,
                       class_colours=params.class_colours)
    if params.object_counts is not None:
        base = replace(base, object_count_weights=params.object_counts)
    return replace(base, **vocabulary(fmt).scene)


def make_split(fmt: str, split: str, params: SyntheticParams) -> list[GroundTruthVideo]:
    """The labelled GroundTruthVideos of one split. Video ids are 4-digit numbers, unique across splits
    (train 0000.., val after train) so every format's naming rules accept them."""
    cfg, vocab = scene_config(fmt, params), vocabulary(fmt)
    offset = 0 if split == "train" else params.videos_train
    return [
        to_ground_truth(make_scene(params.seed, split, i, cfg, video_id=f"{offset + i:04d}"), vocab)
        for i in range(params.num_videos(split))
    ]


def generate(fmt: str, out: Path, params: SyntheticParams | None = None, overwrite: bool = False) -> Path:
    """Write the synthetic train and val splits of `fmt` under `out` (plus a manifest); returns `out`.
    `out` must be empty or absent (stale files from another run would be read as part of the dataset);
    `overwrite=True` deletes it first."""
    from vidseg.data.formats import get_format

    params = params or SyntheticParams()
    vocab = vocabulary(fmt)
    module = get_format(fmt)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out}: output folder is not empty (use overwrite=True / --overwrite)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    categories = list(vocab.categories)
    for split in SPLITS:
        videos = make_split(fmt, split, params)
        module.write_ground_truth(out, split, videos, categories, **vocab.write_options)
    versions = generator_version(fmt)
    manifest = {"format": fmt, "generator_version": versions["v"], "format_version": versions.get("fv"),
                "params": asdict(params)}  # fmt: skip
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
    return out


def default_cache_dir() -> Path:
    """`$VIDSEG_CACHE` if set, else `~/.cache/vidseg/synthetic`."""
    env = os.environ.get("VIDSEG_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "vidseg" / "synthetic"


def generator_version(fmt: str) -> dict[str, int]:
    """The versions of `fmt`'s output, the generator's (`v`) and the format's own (`fv`, when it has one): part of
    its cache key and manifest."""
    return {"v": GENERATOR_VERSION, **({"fv": FORMAT_VERSIONS[fmt]} if fmt in FORMAT_VERSIONS else {})}


def cache_key(fmt: str, params: SyntheticParams) -> str:
    fields = asdict(params)
    if not params.class_colours:  # added later: leave the keys of the random-colour datasets unchanged
        del fields["class_colours"]
    if params.object_counts is None:  # likewise
        del fields["object_counts"]
    blob = json.dumps({"format": fmt, **generator_version(fmt), **fields}, sort_keys=True)
    return f"{fmt}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def ensure_synthetic(format: str, cache_dir: Path | str | None = None, **kw: Any) -> Path:
    """Root of the synthetic dataset of `format` for parameters `kw` (SyntheticParams fields: seed, height,
    width, videos_train, videos_val, frames, class_colours, object_counts), generated on first use into
    `<cache_dir>/<format>-<hash>` (cache_dir default: `default_cache_dir()`). Safe for concurrent callers (threads,
    processes, ranks):
    each generates into its own temp folder and renames it into place; a loser of the race discards its
    copy and uses the winner's."""
    if format not in FORMATS:
        raise ValueError(f"no synthetic generator for format {format!r}; known: {FORMATS}")
    params = SyntheticParams(**kw)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = cache / cache_key(format, params)
    if (final / MANIFEST).is_file():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".{final.name}.tmp-"))
    try:
        generate(format, tmp, params)
        try:
            os.rename(tmp, final)
        except OSError:  # another caller renamed first (the target exists and is not empty)
            if not (final / MANIFEST).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic moving-shapes dataset in an official format.")
    parser.add_argument("--format", required=True, choices=[*FORMATS, "all"])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--videos-train", type=int, default=24)
    parser.add_argument("--videos-val", type=int, default=8)
    parser.add_argument("--frames", type=int, default=None, help="frames per video (default: 12..24; "
                        "cityscapes_vps always has its 6 annotated frames)")
    parser.add_argument("--class-colours", action="store_true",
                        help="objects in their class's colour family (default: random colours)")
    parser.add_argument("--object-counts", type=float, nargs="+", default=None,
                        help="relative frequencies of 1, 2, ... objects per video (default: uniform over 1..5)")
    parser.add_argument("--overwrite", action="store_true", help="delete a non-empty output folder first")
    args = parser.parse_args(argv)
    params = SyntheticParams(args.seed, args.height, args.width, args.videos_train, args.videos_val, args.frames,
                             args.class_colours, args.object_counts)
    formats = FORMATS if args.format == "all" else (args.format,)
    start = time.perf_counter()
    for fmt in formats:
        t0 = time.perf_counter()
        root = generate(fmt, args.out / fmt if args.format == "all" else args.out, params, args.overwrite)
        print(f"{fmt:15s} {time.perf_counter() - t0:6.2f} s  -> {root}")
    print(f"total {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
