"""The label-file scan cache: a second read decodes nothing, changed files are decoded again, and a cache that
cannot be used is a warning, not an error."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from _panoptic_builders import make_video
from PIL import Image

from vidseg.data.formats import _cityscapes_vps_release, cityscapes_vps, kitti_step
from vidseg.data.formats.scan_cache import ScanCache, ScanCacheWarning, file_digest, scan_cache_dir
from vidseg.data.records import AnnotationFormatError, CorruptMediaError

PERSON, CAR, ROAD, SKY = 11, 13, 0, 10


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "scans"
    monkeypatch.setenv("VIDSEG_SCAN_CACHE", str(folder))
    return folder


@pytest.fixture
def kitti(tmp_path):
    root = tmp_path / "kitti"
    videos = [make_video("0002", (SKY, ROAD), {1: PERSON, 2: CAR}, seed=1), make_video("0006", (ROAD, SKY), {1: CAR})]
    kitti_step.write_ground_truth(root, "val", videos, kitti_step.default_categories())
    return root


def _counting(monkeypatch, module, name="_scan"):
    calls = []
    original = getattr(module, name)

    def scan(*args, **kw):
        calls.append(args[0])
        return original(*args, **kw)

    monkeypatch.setattr(module, name, scan)
    return calls


def _summary(record):
    return [
        (v.video_id, {t: i.category_id for t, i in v.tracks.items()}, [(a.frame, a.track_ids) for a in v.annotations])
        for v in record.videos
    ]


def test_second_read_decodes_nothing_and_a_changed_file_is_decoded_again(kitti, cache_dir, monkeypatch):
    calls = _counting(monkeypatch, kitti_step)
    first = kitti_step.read(kitti, "val")
    assert len(calls) == 12 and len(list(cache_dir.glob("kitti_step-*.json"))) == 1
    second = kitti_step.read(kitti, "val")
    assert len(calls) == 12 and _summary(second) == _summary(first)
    png = kitti / "panoptic_maps" / "val" / "0006" / "000003.png"
    rgb = np.array(Image.open(png))
    rgb[40:44, 40:44] = (CAR, 0, 9)  # a new car track, instance 9, in frame 3
    Image.fromarray(rgb).save(png)
    third = kitti_step.read(kitti, "val")
    assert calls[12:] == [png]
    assert (CAR << 16 | 9) in third.videos[1].tracks and (CAR << 16 | 9) in third.videos[1].annotations[3].track_ids
    rgb[0, 0] = (7, 0, 5)  # instance on a stuff class: an error from the scan, not hidden by the cache
    Image.fromarray(rgb).save(png)
    with pytest.raises(AnnotationFormatError, match="000003.png: instance id 5 on stuff class 7"):
        kitti_step.read(kitti, "val")


def test_cache_is_keyed_by_vocabulary_and_can_be_turned_off(kitti, cache_dir, monkeypatch):
    calls = _counting(monkeypatch, kitti_step)
    kitti_step.read(kitti, "val")
    cats = kitti_step.default_categories()
    kitti_step.read(kitti, "val", categories=[c if c.id != 12 else type(c)(12, "rider", True) for c in cats])
    assert len(calls) == 24 and len(list(cache_dir.glob("kitti_step-*.json"))) == 2
    monkeypatch.setenv("VIDSEG_SCAN_CACHE", "off")
    assert scan_cache_dir() is None
    kitti_step.read(kitti, "val")
    assert len(calls) == 36 and len(list(cache_dir.glob("*.json"))) == 2


def test_unusable_cache_is_a_warning(kitti, cache_dir, monkeypatch):
    calls = _counting(monkeypatch, kitti_step)
    kitti_step.read(kitti, "val")
    (path,) = cache_dir.glob("kitti_step-*.json")
    path.write_text(path.read_text()[:100])
    with pytest.warns(ScanCacheWarning, match="unusable scan cache"):
        kitti_step.read(kitti, "val")
    assert len(calls) == 24 and json.loads(path.read_text())["files"]  # decoded again and rewritten
    blocked = cache_dir.parent / "blocked"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("VIDSEG_SCAN_CACHE", str(blocked / "scans"))
    with pytest.warns(ScanCacheWarning, match="cannot write the scan cache"):
        record = kitti_step.read(kitti, "val")
    assert len(record.videos) == 2


def test_scan_cache_map_by_content(tmp_path, cache_dir):
    from concurrent.futures import ThreadPoolExecutor

    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    assert file_digest([a, b]) != file_digest([b, a]) != file_digest([a])
    seen = []

    def scan(item):
        seen.append(item)
        return [len(item.read_bytes())]

    with ThreadPoolExecutor(2) as pool:
        cache = ScanCache("demo", {"root": "x"})
        assert cache.map(pool, scan, [a, b], lambda p: (p,)) == [[3], [3]]
        cache.save()
        a.write_bytes(b"three")  # same file, new bytes: decoded again, even with an unchanged size and time
        again = ScanCache("demo", {"root": "x"})
        assert again.map(pool, scan, [a, b], lambda p: (p,)) == [[5], [3]]
        assert (again.hits, again.misses) == (1, 1) and seen == [a, b, a]
        assert ScanCache("demo", {"root": "y"}).path != again.path


def test_cityscapes_release_read_uses_the_cache(tmp_path, cache_dir, monkeypatch):
    videos = [make_video("v0", (SKY, ROAD), {1: PERSON, 2: CAR}, seed=3)]
    cityscapes_vps.write_ground_truth(tmp_path, "val", videos, cityscapes_vps.default_categories(), release_labels=True)
    calls = _counting(monkeypatch, _cityscapes_vps_release)
    first = cityscapes_vps.read(tmp_path, "val", labels="cls_inst")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = cityscapes_vps.read(tmp_path, "val", labels="cls_inst")
    assert len(calls) == 6 and _summary(second) == _summary(first)
    assert second.videos[0].annotations[0].track_ids == {PERSON * 1000 + 1, CAR * 1000 + 2}


def test_scan_settings_are_part_of_an_entry(kitti, cache_dir):
    """Frames resized under unchanged label PNGs: the size check is not skipped by a cached result."""
    kitti_step.read(kitti, "val")
    for frame in (kitti / "images" / "val" / "0002").iterdir():
        Image.fromarray(np.zeros((32, 40, 3), dtype=np.uint8)).save(frame)
    with pytest.raises(CorruptMediaError, match="0002/000000.png: PNG size 64x80 .* does not match the video's 32x40"):
        kitti_step.read(kitti, "val")


def test_results_before_a_failing_file_are_kept(kitti, cache_dir, monkeypatch):
    png = kitti / "panoptic_maps" / "val" / "0006" / "000005.png"
    rgb = np.array(Image.open(png))
    rgb[0, 0] = (7, 0, 5)
    Image.fromarray(rgb).save(png)
    with pytest.raises(AnnotationFormatError, match="instance id 5 on stuff class 7"):
        kitti_step.read(kitti, "val")
    rgb[0, 0] = (ROAD, 0, 0)
    Image.fromarray(rgb).save(png)
    calls = _counting(monkeypatch, kitti_step)
    kitti_step.read(kitti, "val")
    assert calls == [png]  # every other file's result was saved by the failed read


def test_malformed_entries_are_a_warning(kitti, cache_dir, monkeypatch):
    kitti_step.read(kitti, "val")
    (path,) = cache_dir.glob("kitti_step-*.json")
    data = json.loads(path.read_text())
    name = sorted(data["files"])[0]
    data["files"][name] = 7
    path.write_text(json.dumps(data))
    calls = _counting(monkeypatch, kitti_step)
    with pytest.warns(ScanCacheWarning, match="1 malformed scan cache entries"):
        kitti_step.read(kitti, "val")
    assert [str(c.resolve()) for c in calls] == [name]
