"""Synthetic generator: determinism, scene properties, per-format labelling, and generate -> read round trips
through every format's official-layout writer and reader."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from vidseg.data import synthetic as syn
from vidseg.data.formats import get_format
from vidseg.data.records import IGNORE_LABEL
from vidseg.data.synthetic_scene import CLASS_COLOURS, SHAPES, STUFF, SceneConfig, exemplar_point, make_scene
from vidseg.data.video import open_frames

BURST_DISTRACTORS = {20, 63, 108, 180, 188, 204, 212, 247, 303, 403, 407, 415, 490, 504, 507, 513, 529, 567,
                     569, 588, 672, 691, 702, 708, 711, 720, 736, 737, 798, 813, 815, 827, 831, 851, 877, 883,
                     912, 971, 976, 1130, 1133, 1134, 1169, 1184, 1220}  # fmt: skip
BURST_COMMON = {4, 13, 34, 35, 36, 41, 45, 58, 60, 78, 79, 81, 91, 95, 99, 118, 126, 133, 139, 154, 174, 185,
                211, 221, 229, 235, 237, 276, 299, 347, 371, 382, 392, 428, 429, 452, 475, 480, 502, 544, 579,
                621, 625, 642, 699, 714, 717, 729, 747, 779, 805, 829, 852, 896, 926, 937, 961, 979, 980, 982,
                993, 1001, 1018, 1038, 1057, 1091, 1097, 1099, 1115, 1117, 1122, 1132, 1135, 1144, 1155, 1162,
                1215, 1229}  # fmt: skip  (formats.md §8.6)


@pytest.fixture(scope="module")
def default_scenes():
    cfg = SceneConfig()
    return [make_scene(0, "train", i, cfg) for i in range(24)]


def test_same_seed_same_arrays_different_seed_differs():
    cfg = SceneConfig(height=40, width=56, crowd=True, void=True)
    a, b = make_scene(7, "train", 2, cfg), make_scene(7, "train", 2, cfg)
    assert a.num_frames == b.num_frames
    for x, y in zip(a.frames + a.instance_maps, b.frames + b.instance_maps):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.stuff_map, b.stuff_map)
    c = make_scene(8, "train", 2, cfg)
    d = make_scene(7, "val", 2, cfg)
    for other in (c, d):
        same_len = other.num_frames == a.num_frames
        assert not (same_len and all(np.array_equal(x, y) for x, y in zip(a.frames, other.frames)))


def test_scene_structure(default_scenes):
    for s in default_scenes:
        assert 12 <= s.num_frames <= 24
        assert all(f.shape == (96, 96, 3) and f.dtype == np.uint8 for f in s.frames)
        ids = sorted(s.track_shapes)
        assert ids == list(range(1, len(ids) + 1)) and 1 <= len(ids) <= 5
        present = sorted({int(v) for m in s.instance_maps for v in np.unique(m)} - {0})
        assert present == ids  # every track is visible somewhere, no stray ids
        firsts = [next(t for t, m in enumerate(s.instance_maps) if (m == k).any()) for k in ids]
        assert firsts == sorted(firsts)  # ids follow first appearance
        # 2..4 stuff bands, in sky/building/vegetation/road order from top to bottom in every column
        assert 2 <= len(s.stuff_present) <= 4
        assert np.all(np.diff(s.stuff_map, axis=0) >= 0)
        assert sorted(np.unique(s.stuff_map).tolist()) == [STUFF.index(n) for n in s.stuff_present]


def test_scene_properties_over_a_split(default_scenes):
    shapes = {sh for s in default_scenes for sh in s.track_shapes.values()}
    assert len(shapes) >= 4 and shapes <= set(SHAPES)
    entered = left = occluded = 0
    for s in default_scenes:
        for k in s.track_shapes:
            visible = np.array([(m == k).sum() for m in s.instance_maps])
            amodal = s.amodal_area[k]
            assert np.all(visible <= amodal)
            first = int(np.argmax(visible > 0))
            if first > 0 and amodal[0] == 0:  # outside the frame at t=0, inside later
                entered += 1
            last_seen = int(np.flatnonzero(visible > 0)[-1])
            if last_seen < s.num_frames - 1 and amodal[-1] == 0:
                left += 1
            for t in np.flatnonzero(visible < amodal):  # hidden pixels must lie under a nearer track
                nearer = [j for j in np.unique(s.instance_maps[t]) if j and s.depth[int(j)] > s.depth[k]]
                assert nearer, f"video {s.video_id} frame {t}: track {k} loses pixels with nothing in front"
                occluded += 1
    assert entered > 0 and left > 0 and occluded > 0


def test_exemplar_point_is_a_distance_peak():
    rng = np.random.default_rng(1)
    for _ in range(5):
        mask = np.zeros((12, 15), bool)
        y, x = rng.integers(0, 8), rng.integers(0, 10)
        mask[y : y + rng.integers(2, 5), x : x + rng.integers(2, 6)] = True
        mask[rng.integers(0, 12), rng.integers(0, 15)] = True
        px, py = exemplar_point(mask)
        assert mask[py, px]
        # brute force: distance of each mask pixel to the nearest non-mask pixel (outside the frame counts)
        padded = np.pad(mask, 1)
        inside = np.argwhere(padded)
        outside = np.argwhere(~padded)
        depth = cdist(inside, outside).min(axis=1)
        best = depth.max()
        assert depth[np.flatnonzero((inside == [py + 1, px + 1]).all(axis=1))[0]] == pytest.approx(best)
    with pytest.raises(ValueError, match="empty mask"):
        exemplar_point(np.zeros((3, 3), bool))


def test_labelling_per_format():
    params = syn.SyntheticParams(seed=0, height=64, width=80, videos_train=4, videos_val=1, frames=8)
    kitti = syn.make_split("kitti_step", "train", params)
    scene = make_scene(0, "train", 0, syn.scene_config("kitti_step", params), video_id="0000")
    gt = kitti[0]
    for inst, sem in zip(gt.instance_maps, gt.semantic_maps):
        crowd = scene.crowd_mask & (inst == 0)
        assert np.all(sem[crowd] == 13)  # crowd: thing-class pixels without a track
        stuff = (inst == 0) & ~scene.crowd_mask
        lut = np.array([syn.CITYSCAPES_STUFF[n] for n in STUFF])
        np.testing.assert_array_equal(sem[stuff], lut[scene.stuff_map[stuff]])
    assert max((scene.crowd_mask & (inst == 0)).sum() for inst in gt.instance_maps) > 0
    for t, (inst, sem) in enumerate(zip(gt.instance_maps, gt.semantic_maps)):
        for k, c in gt.track_categories.items():
            assert np.all(sem[inst == k] == c), (t, k)
    assert set(gt.track_categories.values()) <= {11, 13}
    vspw = syn.make_split("vspw", "train", params)[1]  # odd index: void patch
    assert (vspw.semantic_maps[0] == IGNORE_LABEL).sum() > 0
    ytvis = syn.make_split("ytvis", "train", params)[0]
    assert np.all((ytvis.semantic_maps[0] == IGNORE_LABEL) == (ytvis.instance_maps[0] == 0))
    for k, (t, p) in ytvis.points.items():
        assert ytvis.instance_maps[t][int(p.y), int(p.x)] == k
        assert all(not (m == k).any() for m in ytvis.instance_maps[:t])  # first appearance


def test_vocabularies():
    ytvis = syn.vocabulary("ytvis")
    assert [c.id for c in ytvis.categories] == [1, 2, 3, 4, 5] and len(ytvis.categories) >= 4
    kitti = syn.vocabulary("kitti_step").categories
    assert [c.id for c in kitti] == list(range(19)) and {c.id for c in kitti if c.isthing} == {11, 13}
    assert [c.name for c in kitti][:3] == ["road", "sidewalk", "building"] and kitti[10].name == "sky"
    city = syn.vocabulary("cityscapes_vps").categories
    assert {c.id for c in city if c.isthing} == set(range(11, 19))
    vip = syn.vocabulary("vipseg").categories
    assert [c.id for c in vip] == list(range(124)) and sum(c.isthing for c in vip) == 58
    vspw = syn.vocabulary("vspw").categories
    assert [c.id for c in vspw] == list(range(124))
    burst_ids = {c.id for c in syn.vocabulary("burst").categories}
    assert burst_ids & BURST_COMMON and (burst_ids - BURST_COMMON - BURST_DISTRACTORS)
    assert not burst_ids & BURST_DISTRACTORS
    # both splits of the default BURST data hold a common and an uncommon class (else run.py divides by 0)
    for split in syn.SPLITS:
        used = {c for v in syn.make_split("burst", split, syn.SyntheticParams(frames=4)) for c in
                v.track_categories.values()}  # fmt: skip
        assert used & BURST_COMMON and used - BURST_COMMON


# ----------------------------------------------------------------------------------------------------------
# generate -> read round trip through every format
# ----------------------------------------------------------------------------------------------------------

SMALL = syn.SyntheticParams(seed=3, height=48, width=64, videos_train=3, videos_val=2, frames=8)
LOSSLESS_FRAMES = {"kitti_step", "cityscapes_vps"}  # PNG frames; the others: JPEG (noisy textures: ~7 mean)


def _match_tracks(read_masks: dict[int, np.ndarray], gen_map: np.ndarray, where: str) -> dict[int, int]:
    """read track id -> generated track id, requiring each read mask to equal one generated track's mask."""
    out = {}
    for rid, mask in read_masks.items():
        under = np.unique(gen_map[mask])
        assert len(under) == 1 and under[0] != 0, f"{where}: read track {rid} covers generated ids {under}"
        np.testing.assert_array_equal(mask, gen_map == under[0], err_msg=f"{where}: track {rid}")
        out[rid] = int(under[0])
    return out


@pytest.mark.parametrize("fmt", [f for f in syn.FORMATS if f != "video"])
def test_round_trip(tmp_path, fmt):
    root = syn.generate(fmt, tmp_path / fmt, SMALL)
    module = get_format(fmt)
    for split in syn.SPLITS:
        generated = syn.make_split(fmt, split, SMALL)
        ds = module.read(root, split)
        vocab_names = {c.id: c.name for c in syn.vocabulary(fmt).categories}
        read_names = {c.id: c.name for c in ds.categories}
        if fmt == "davis":
            assert read_names == {}  # DAVIS has no classes
        elif fmt == "ytvos":  # names only; ids = rank among the names used in the split
            assert set(read_names.values()) <= set(vocab_names.values())
        else:
            assert read_names == vocab_names
        assert len(ds.videos) == len(generated)
        for rec, gt in zip(ds.videos, generated):
            where = f"{fmt}/{split}/{gt.video_id}"
            assert rec.num_frames == len(gt.frames) and (rec.height, rec.width) == (gt.height, gt.width)
            pixels = open_frames(rec.frames).read(list(range(rec.num_frames)))
            err = np.abs(pixels.astype(int) - np.stack(gt.frames)).mean()
            assert err == 0 if fmt in LOSSLESS_FRAMES else err < 12, f"{where}: frame error {err}"
            assert rec.annotated_frames == list(range(len(gt.frames)))
            mapping: dict[int, int] = {}
            for ann in rec.annotations:
                labels = ann.decode()
                got = _match_tracks(labels.masks, gt.instance_maps[ann.frame], f"{where} frame {ann.frame}")
                for rid, gid in got.items():
                    assert mapping.setdefault(rid, gid) == gid, f"{where}: track {rid} changes identity"
                if fmt != "vspw":  # every generated track present in this frame was read back
                    expect = set(np.unique(gt.instance_maps[ann.frame]).tolist()) - {0}
                    assert set(got.values()) == expect, where
                if labels.semantic is not None:
                    np.testing.assert_array_equal(labels.semantic, gt.semantic_maps[ann.frame], err_msg=where)
                else:
                    assert fmt in ("ytvis", "davis", "ytvos", "burst")
            assert len(set(mapping.values())) == len(mapping)  # one read track per generated track
            if fmt == "vspw":
                assert not rec.tracks  # semantic-only format
                continue
            assert sorted(mapping.values()) == sorted(gt.track_categories)
            for rid, gid in mapping.items():
                got = rec.tracks[rid].category_id
                if fmt == "davis":
                    assert got is None
                else:  # same class name; same id except for YouTube-VOS (names only)
                    assert read_names[got] == vocab_names[gt.track_categories[gid]], f"{where}: track {rid}"
                    assert fmt == "ytvos" or got == gt.track_categories[gid], f"{where}: track {rid}"
            if fmt == "ytvos":
                names = {c.id: c.name for c in syn.vocabulary(fmt).categories}
                cats = rec.meta["object_categories"]
                assert {int(k): v for k, v in cats.items()} == {
                    r: names[gt.track_categories[g]] for r, g in mapping.items()
                }
            if fmt == "burst":
                points = {mapping[p.track_id]: (p.frame, p.point) for p in rec.prompts}
                assert points == gt.points, where
            if fmt in ("davis", "ytvos", "burst"):
                first = {mapping[p.track_id]: p.frame for p in rec.prompts}
                assert first == {g: t for g, (t, _) in gt.points.items()}, where


def test_video_format_generation(tmp_path):
    root = syn.generate("video", tmp_path / "v", SMALL)
    with pytest.raises(FileExistsError, match="not empty"):  # stale videos would join the dataset
        syn.generate("video", root, SMALL)
    (root / "val" / "9999.mp4").write_bytes(b"stale")
    assert syn.generate("video", root, SMALL, overwrite=True) == root
    assert not (root / "val" / "9999.mp4").exists()
    ds = get_format("video").read(root, "val")
    generated = syn.make_split("video", "val", SMALL)
    assert [v.video_id for v in ds.videos] == [g.video_id for g in generated] == ["0003", "0004"]
    for rec, gt in zip(ds.videos, generated):
        assert rec.num_frames == len(gt.frames) and rec.fps == pytest.approx(gt.fps)


@pytest.mark.parametrize("fmt", [f for f in syn.FORMATS if f != "video"])
def test_same_seed_byte_identical_files(tmp_path, fmt):
    tiny = syn.SyntheticParams(seed=5, height=40, width=48, videos_train=2, videos_val=1, frames=6)
    a = syn.generate(fmt, tmp_path / "a", tiny)
    b = syn.generate(fmt, tmp_path / "b", tiny)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) > 3
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), f"{fmt}: {rel} differs between runs"
    other = syn.generate(fmt, tmp_path / "c", syn.SyntheticParams(**{**tiny.__dict__, "seed": 6}))
    annotations = [r for r in files_a if r.suffix in (".json", ".png") and r.name != syn.MANIFEST]
    assert any((a / r).read_bytes() != (other / r).read_bytes() for r in annotations if (other / r).exists())


# ----------------------------------------------------------------------------------------------------------
# cache
# ----------------------------------------------------------------------------------------------------------


def test_ensure_synthetic_caches_and_is_safe_concurrently(tmp_path, monkeypatch):
    kw = {"seed": 1, "height": 32, "width": 32, "videos_train": 2, "videos_val": 1, "frames": 4}
    results: list[Path] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(syn.ensure_synthetic("ytvis", tmp_path, **kw))
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    root = results[0]
    assert root.parent == tmp_path and root.name.startswith("ytvis-")
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temp folders left behind
    assert len(get_format("ytvis").read(root, "train").videos) == 2

    def fail(*a, **k):
        raise AssertionError("cached dataset was regenerated")

    monkeypatch.setattr(syn, "generate", fail)
    assert syn.ensure_synthetic("ytvis", tmp_path, **kw) == root
    with pytest.raises(AssertionError, match="regenerated"):  # other parameters -> another dataset
        syn.ensure_synthetic("ytvis", tmp_path, **{**kw, "seed": 2})
    monkeypatch.setenv("VIDSEG_CACHE", str(tmp_path))
    assert syn.default_cache_dir() == tmp_path
    assert syn.ensure_synthetic(format="ytvis", **kw) == root  # keyword use, as from a Hydra config
    with pytest.raises(ValueError, match="no synthetic generator"):
        syn.ensure_synthetic("coco", tmp_path)


@pytest.mark.slow
def test_cli_all_formats_default_size(tmp_path):
    """Writes every format at the default size and prints the time per format (reported, not asserted)."""
    proc = subprocess.run(
        [sys.executable, "-m", "vidseg.data.synthetic", "--format", "all", "--out", str(tmp_path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    print(proc.stdout)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(syn.FORMATS)
    assert "total" in proc.stdout.splitlines()[-1]
    assert len(get_format("davis").read(tmp_path / "davis", "train").videos) == 24


def test_class_colours_recolour_the_same_scene_by_class():
    """`class_colours` keeps every draw of the scene (same layout, motion, masks) and gives each object its
    shape class's colour family; without it, objects of one class have unrelated colours."""
    plain, coloured = SceneConfig(), SceneConfig(class_colours=True)
    spreads: dict[bool, list[float]] = {False: [], True: []}
    for i in range(10):
        a, b = make_scene(0, "train", i, plain), make_scene(0, "train", i, coloured)
        for x, y in zip(a.instance_maps, b.instance_maps):
            np.testing.assert_array_equal(x, y)
        assert a.track_shapes == b.track_shapes
        for scene, on in ((a, False), (b, True)):
            frame, ids = scene.frames[0].astype(np.float64), scene.instance_maps[0]
            for tid, shape in scene.track_shapes.items():
                if (ids == tid).sum() < 20:
                    continue
                mean = frame[ids == tid].mean(0)
                ref = np.asarray(CLASS_COLOURS[shape]) * (1 + 0.55) / 2  # the mean of the two tones' bases
                spreads[on].append(float(np.abs(mean - ref).max()))
    assert len(spreads[True]) >= 10
    assert max(spreads[True]) < 60  # jitter ±22 per tone plus texture mixing
    assert np.median(spreads[False]) > 60


def test_generator_version_bump_reaches_formats_with_their_own_version(monkeypatch):
    plain = syn.SyntheticParams(videos_train=4, videos_val=2)
    before = {fmt: syn.cache_key(fmt, plain) for fmt in ("cityscapes_vps", "kitti_step")}
    monkeypatch.setattr(syn, "GENERATOR_VERSION", syn.GENERATOR_VERSION + 1)
    assert all(syn.cache_key(fmt, plain) != key for fmt, key in before.items())
    monkeypatch.undo()
    monkeypatch.setitem(syn.FORMAT_VERSIONS, "cityscapes_vps", syn.FORMAT_VERSIONS["cityscapes_vps"] + 1)
    assert syn.cache_key("cityscapes_vps", plain) != before["cityscapes_vps"]
    assert syn.cache_key("kitti_step", plain) == before["kitti_step"]


def test_class_colours_cache_keys():
    """The option is part of the cache key; the keys of the random-colour datasets did not change with it."""
    plain = syn.SyntheticParams(videos_train=160, videos_val=32)
    assert syn.cache_key("ytvis", plain) == "ytvis-2485d4232a27"  # the key before the option existed
    coloured = syn.SyntheticParams(videos_train=160, videos_val=32, class_colours=True)
    assert syn.cache_key("ytvis", coloured) != syn.cache_key("ytvis", plain)


def test_object_counts_set_the_objects_per_video_and_key_the_cache():
    """`object_counts` gives the relative frequencies of 1, 2, ... objects per video (DAVIS format: all of them
    visible in frame 0); None keeps the uniform 1-5 and the cache keys made before the option existed."""
    plain = syn.SyntheticParams(videos_train=160, videos_val=32)
    assert syn.cache_key("davis", plain) == "davis-44c726fb789a"  # the key before the option existed
    hist = syn.SyntheticParams(videos_train=60, videos_val=2, object_counts=[1, 0, 1])  # a list, as from Hydra
    assert hist.object_counts == (1.0, 0.0, 1.0)
    assert syn.cache_key("davis", hist) != syn.cache_key("davis", syn.SyntheticParams(videos_train=60, videos_val=2))
    counts = [len(v.track_categories) for v in syn.make_split("davis", "train", hist)]
    assert set(counts) == {1, 3}, counts
    assert 15 <= counts.count(1) <= 45
    default = [len(v.track_categories) for v in syn.make_split("davis", "train", syn.SyntheticParams(videos_train=60))]
    assert set(default) == {1, 2, 3, 4, 5}
    for bad in ([], [0, 0], [1, -1]):
        with pytest.raises(ValueError, match="object_counts"):
            syn.SyntheticParams(object_counts=bad)
