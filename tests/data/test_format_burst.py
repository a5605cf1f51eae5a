"""BURST format: GT round trip (masks, ids, classes, exemplar points), results round trip, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _gt_builders import (
    assert_decodes_to_gt,
    assert_predictions_equal,
    edit_json,
    make_videos,
    predictions_from_gt,
    rle,
)
from PIL import Image
from scipy import ndimage

from vidseg.data.formats import burst, get_format
from vidseg.data.formats._burst_write import interior_point
from vidseg.data.records import AnnotationFormatError, Category, MissingFileError, Point, TrackPrediction

# LVIS-style ids: 4 and 13 are "common" classes in BURST's run.py, 7 is not
CATS = [Category(4, "person"), Category(7, "dog"), Category(13, "car")]
REMAP = {1: 4, 2: 7, 3: 13}


def _videos() -> list:
    videos = make_videos()
    for v in videos:
        v.track_categories = {k: REMAP[c] for k, c in v.track_categories.items()}
    return videos


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("burst")
    videos = _videos()
    burst.write_ground_truth(root, "val", videos, CATS)
    return root, videos


@pytest.fixture()
def copy(tmp_path: Path, written: tuple[Path, list]) -> Path:
    return shutil.copytree(written[0], tmp_path / "burst")


def _edit(root: Path, fname: str, edit) -> None:
    edit_json(root / "val" / fname, edit)


def test_registry_points_here() -> None:
    assert get_format("burst") is burst


def test_gt_round_trip(written: tuple[Path, list]) -> None:
    root, videos = written
    ds = burst.read(root, "val")
    assert ds.format == "burst" and [c.id for c in ds.categories] == [4, 7, 13]
    assert ds.meta["split_in_file"] == "val"
    for sid, (video, rec) in enumerate(zip(videos, ds.videos), start=1):
        assert rec.video_id == str(sid) and rec.meta["seq_name"] == video.video_id
        assert rec.frames.paths[0] == root / "val" / "YFCC100M" / video.video_id / "frame0000.jpg"
        assert (rec.height, rec.width, rec.num_frames, rec.fps) == (64, 80, len(video.frames), 6.0)
        assert {k: t.category_id for k, t in rec.tracks.items()} == video.track_categories
        assert rec.annotated_frames == list(range(len(video.frames)))
        for ann in rec.annotations:
            assert_decodes_to_gt(ann, video)
        # exemplars: the given point, or the distance-transform peak of the first mask
        for p in rec.prompts:
            mask = video.instance_maps[p.frame] == p.track_id
            assert p.frame == min(
                t for t in range(len(video.frames)) if (video.instance_maps[t] == p.track_id).any()
            )
            if p.track_id in video.points:
                assert p.point == video.points[p.track_id][1]
            else:
                dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
                assert (
                    dist[int(p.point.y), int(p.point.x)] == dist.max()
                    and mask[int(p.point.y), int(p.point.x)]
                )
            ys, xs = np.nonzero(mask)
            assert p.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert [p.track_id for p in rec.prompts] == sorted(video.track_categories)
        img = np.asarray(Image.open(rec.frames.paths[2]).convert("RGB"), dtype=np.int16)
        assert np.abs(img - video.frames[2]).mean() < 3.0


def test_interior_point_of_a_box() -> None:
    mask = np.zeros((20, 30), bool)
    mask[4:15, 10:21] = True  # 11 x 11 box centred at (15, 9)
    assert interior_point(mask) == Point(15.0, 9.0)


def test_common_uncommon_files(written: tuple[Path, list]) -> None:
    root, _ = written
    common = burst.read(root, "val", ann_file=root / "val/common_classes.json", first_frame_file=False)
    uncommon = burst.read(root, "val", ann_file=root / "val/uncommon_classes.json", first_frame_file=False)
    assert {t.category_id for v in common.videos for t in v.tracks.values()} == {4, 13}
    assert {t.category_id for v in uncommon.videos for t in v.tracks.values()} == {7}


def test_sparse_annotation_and_train_prompts(tmp_path: Path) -> None:
    videos = _videos()
    burst.write_ground_truth(tmp_path, "train", videos, CATS, annotate_every=2)
    (tmp_path / "train/first_frame_annotations.json").unlink()  # train ships none
    ds = burst.read(tmp_path, "train")
    alpha = ds.videos[0]
    assert alpha.num_frames == 6 and alpha.annotated_frames == [0, 2, 4]
    assert [(p.track_id, p.frame, p.point) for p in alpha.prompts] == [
        (1, 0, None),
        (2, 2, None),
        (3, 0, None),
    ]
    assert ds.meta["first_frame_file"] is None


def test_results_round_trip(tmp_path: Path, written: tuple[Path, list]) -> None:
    root, videos = written
    ds = burst.read(root, "val")
    preds = predictions_from_gt(videos, [v.video_id for v in ds.videos])
    path = burst.write_results(tmp_path, preds, ds)
    data = json.loads(path.read_text())
    seq = data["sequences"][0]
    assert (seq["id"], seq["dataset"], seq["seq_name"]) == (1, "YFCC100M", "alpha")
    assert "2" not in seq["segmentations"][0]  # absent track omitted, not an empty RLE
    assert seq["segmentations"][2]["2"]["is_gt"] is False and isinstance(
        seq["segmentations"][2]["2"]["rle"], str
    )
    assert_predictions_equal(burst.read_results(path, ds), preds)


def test_results_only_at_annotated_frames(tmp_path: Path) -> None:
    videos = _videos()
    burst.write_ground_truth(tmp_path, "val", videos, CATS, annotate_every=3)
    ds = burst.read(tmp_path, "val")
    preds = predictions_from_gt(videos, [v.video_id for v in ds.videos])
    empty = rle(np.zeros((64, 80), bool))
    preds[1].tracks[0].masks[3] = empty  # an empty mask is omitted like None
    got = burst.read_results(burst.write_results(tmp_path / "r.json", preds, ds), ds)
    for g, p in zip(got, preds):
        for gt_, pt in zip(g.tracks, p.tracks):
            kept = [m if t % 3 == 0 and m is not empty else None for t, m in enumerate(pt.masks)]
            assert [m is None for m in gt_.masks] == [m is None for m in kept]


def test_results_writer_rejects_unknown_track(tmp_path: Path, written: tuple[Path, list]) -> None:
    ds = burst.read(written[0], "val")
    preds = predictions_from_gt(written[1], [v.video_id for v in ds.videos])
    preds[0].tracks.append(TrackPrediction(9, 4, 0.5, [None] * 6))
    with pytest.raises(ValueError, match=r"video '1' track 9: not a GT track"):
        burst.write_results(tmp_path, preds, ds)


def test_read_results_unknown_sequence(tmp_path: Path, written: tuple[Path, list]) -> None:
    ds = burst.read(written[0], "val")
    (tmp_path / "r.json").write_text(json.dumps({"sequences": [{"id": 77, "annotated_image_paths": []}]}))
    with pytest.raises(AnnotationFormatError, match=r"r.json sequence 77: not a sequence id"):
        burst.read_results(tmp_path / "r.json", ds)


# ------------------------------------------------------------------------------------------ bad input


def test_missing_annotation_file(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match=r"val/all_classes.json"):
        burst.read(tmp_path, "val")


def test_missing_frame(copy: Path) -> None:
    (copy / "val/YFCC100M/beta/frame0003.jpg").unlink()
    with pytest.raises(MissingFileError, match=r"beta/frame0003.jpg: frame listed in .* sequence 2"):
        burst.read(copy, "val")


def _drop_annotated(d: dict) -> None:
    d["sequences"][1].update(annotated_image_paths=[], segmentations=[])


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (_drop_annotated, r"sequence 2 \(YFCC100M/beta\): 'annotated_image_paths' is empty"),
        (
            lambda d: d["sequences"][0]["segmentations"][1].update({"5": {"rle": "PT1"}}),
            r"sequence 1 \(YFCC100M/alpha\) segmentations\[1\] \(frame0001.jpg\): track id 5 is not in",
        ),
        (
            lambda d: d["sequences"][0]["track_category_ids"].update({"1": 999}),
            r"sequence 1 .*: track 1 has category id 999, not in 'categories'",
        ),
        (
            lambda d: d["sequences"][1]["segmentations"][0]["1"].update(
                rle={"size": [32, 80], "counts": "PT1"}
            ),
            r"sequence 2 .* track 1: RLE size \[32, 80\] does not match the video size \[64, 80\]",
        ),
        (lambda d: d["sequences"][1]["segmentations"].pop(), r"sequence 2 .*: 'segmentations' has 6 entries"),
        (lambda d: d["sequences"][1].update(id=1), r"all_classes.json: duplicate sequence id 1"),
        (
            lambda d: d["sequences"][0]["annotated_image_paths"].__setitem__(0, "nope.jpg"),
            r"sequence 1 .*: annotated image 'nope.jpg' is not in 'all_image_paths'",
        ),
        (
            lambda d: d["sequences"][0]["annotated_image_paths"].__setitem__(0, ["x"]),
            r"sequence 1 \(YFCC100M/alpha\): 'annotated_image_paths'\[0\] must be an image path string, got list",
        ),
        (
            lambda d: d["sequences"][1].update(neg_category_ids=5),
            r"sequence 2 \(YFCC100M/beta\): field 'neg_category_ids' must be a list of category ids, got int",
        ),
        (
            lambda d: d["sequences"][1].update(not_exhaustive_category_ids=[4, "7"]),
            r"sequence 2 .*: 'not_exhaustive_category_ids'\[1\] must be an int category id, got '7'",
        ),
        (lambda d: d["sequences"][0].update(fps="30"), r"sequence 1 .*: field 'fps' must be a positive number"),
    ],
    ids=[
        "no-annotated-frames",
        "unknown-track",
        "unknown-category",
        "rle-size",
        "seg-length",
        "dup-id",
        "unknown-image",
        "annotated-path-not-string",
        "neg-ids-not-list",
        "not-exhaustive-id-not-int",
        "fps-not-a-number",
    ],
)
def test_bad_all_classes(copy: Path, edit, pattern: str) -> None:
    _edit(copy, "all_classes.json", edit)
    with pytest.raises(AnnotationFormatError, match=pattern) as info:
        burst.read(copy, "val")
    assert "all_classes.json" in str(info.value)


def test_first_frame_unknown_track(copy: Path) -> None:
    def edit(d: dict) -> None:
        seg = d["sequences"][0]["segmentations"][0]
        seg["8"] = seg["1"]

    _edit(copy, "first_frame_annotations.json", edit)
    with pytest.raises(
        AnnotationFormatError, match=r"first_frame_annotations.json sequence 1 .* track id 8 is not"
    ):
        burst.read(copy, "val")


def test_first_frame_missing_point(copy: Path) -> None:
    _edit(
        copy,
        "first_frame_annotations.json",
        lambda d: d["sequences"][1]["segmentations"][0]["2"].pop("point"),
    )
    with pytest.raises(
        AnnotationFormatError, match=r"first_frame_annotations.json sequence 2 .* missing field 'point'"
    ):
        burst.read(copy, "val")


def test_first_frame_missing_sequence(copy: Path) -> None:
    _edit(copy, "first_frame_annotations.json", lambda d: d["sequences"].pop(1))
    with pytest.raises(
        AnnotationFormatError,
        match=r"first_frame_annotations.json: no entry for sequence 2 \(YFCC100M/beta\) of .*all_classes.json",
    ):
        burst.read(copy, "val")


def _set_first_frame(field: str, value: object):
    """Edit setting `field` of track 2's first-frame entry in sequence 2 (beta, frame0000.jpg)."""
    return lambda d: d["sequences"][1]["segmentations"][0]["2"].update({field: value})


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("point", {"x": 5000, "y": -30}, r"'point' \(x=5000, y=-30\) is outside the 80x64 image"),
        ("point", [80, 10], r"'point' \(x=80, y=10\) is outside the 80x64 image \(need 0 <= x < 80"),
        ("point", {"x": 10, "y": 64}, r"'point' \(x=10, y=64\) is outside the 80x64 image"),
        ("bbox", ["a", "b", "c", "d"], r"'bbox'\[0\] must be a finite number, got 'a'"),
        ("bbox", [None, None, None, None], r"'bbox'\[0\] must be a finite number, got None"),
        ("bbox", [1, 2, 3], r"'bbox' must be \[x, y, w, h\], got 3 values"),
    ],
    ids=[
        "point-far-outside",
        "point-x-equals-width",
        "point-y-equals-height",
        "bbox-strings",
        "bbox-nulls",
        "bbox-short",
    ],
)
def test_bad_first_frame_entry(copy: Path, field: str, value: object, pattern: str) -> None:
    _edit(copy, "first_frame_annotations.json", _set_first_frame(field, value))
    where = r"first_frame_annotations.json sequence 2 \(YFCC100M/beta\) \(frame0000.jpg\) track 2: "
    with pytest.raises(AnnotationFormatError, match=where + pattern):
        burst.read(copy, "val")


def test_first_frame_point_on_last_pixel(copy: Path) -> None:
    _edit(copy, "first_frame_annotations.json", _set_first_frame("point", {"x": 79, "y": 63}))
    prompts = {p.track_id: p for p in burst.read(copy, "val").videos[1].prompts}
    assert prompts[2].point == Point(79.0, 63.0)


def test_first_frame_annotated_path_not_string(copy: Path) -> None:
    _edit(
        copy,
        "first_frame_annotations.json",
        lambda d: d["sequences"][0]["annotated_image_paths"].__setitem__(0, ["x"]),
    )
    with pytest.raises(
        AnnotationFormatError,
        match=r"first_frame_annotations.json sequence 1: 'annotated_image_paths'\[0\] must be an image path string",
    ):
        burst.read(copy, "val")


def test_truncated_json(copy: Path) -> None:
    path = copy / "val/all_classes.json"
    path.write_text(path.read_text()[:-40])
    with pytest.raises(AnnotationFormatError, match=r"all_classes.json: invalid or truncated JSON"):
        burst.read(copy, "val")


def test_writer_rejects_point_on_frame_without_track(tmp_path: Path) -> None:
    videos = _videos()
    videos[0].points[2] = (0, Point(30.0, 25.0))  # track 2 enters at frame 2
    with pytest.raises(ValueError, match=r"'alpha' track 2: exemplar point at frame 0"):
        burst.write_ground_truth(tmp_path, "val", videos, CATS)
