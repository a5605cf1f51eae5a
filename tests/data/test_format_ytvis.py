"""YouTube-VIS / OVIS format: GT round trip, results round trip, layouts and bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _gt_builders import (
    CATEGORIES,
    assert_decodes_to_gt,
    assert_predictions_equal,
    edit_json,
    make_videos,
    predictions_from_gt,
    rle,
)
from PIL import Image
from pycocotools import mask as mask_utils

from vidseg.data.formats import get_format, ytvis
from vidseg.data.records import AnnotationFormatError, MissingFileError, TrackPrediction


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("ytvis")
    videos = make_videos()
    ytvis.write_ground_truth(root, "train", videos, CATEGORIES)
    return root, videos


def _load(root: Path) -> dict:
    return json.loads((root / "train" / "instances.json").read_text())


def _corrupt(tmp_path: Path, written: tuple[Path, list], edit) -> Path:
    """Copy the written JSON into tmp_path (frames stay in the fixture root), apply `edit`."""
    return edit_json(written[0] / "train" / "instances.json", edit, tmp_path / "bad.json")


def _read_bad(path: Path, written: tuple[Path, list]):
    root, _ = written
    return ytvis.read(root, "train", ann_file=path, image_root=root / "train" / "JPEGImages")


def test_registry_points_here() -> None:
    assert get_format("ytvis") is ytvis


def test_gt_round_trip_masks_ids_classes(written: tuple[Path, list]) -> None:
    root, videos = written
    ds = ytvis.read(root, "train")
    assert ds.format == "ytvis" and [c.id for c in ds.categories] == [1, 2, 3]
    assert [v.meta["file_names"][0] for v in ds.videos] == ["alpha/00000.jpg", "beta/00000.jpg"]
    ann_id = 0
    for video, rec in zip(videos, ds.videos):
        assert (rec.height, rec.width, rec.num_frames) == (64, 80, len(video.frames))
        # annotation ids run 1.. over videos, tracks ascending; track id = annotation id
        mapping = {}
        for k in sorted(video.track_categories):
            ann_id += 1
            mapping[k] = ann_id
        assert sorted(rec.tracks) == sorted(mapping.values())
        for k, aid in mapping.items():
            assert rec.tracks[aid].category_id == video.track_categories[k]
            assert rec.tracks[aid].iscrowd is False
        assert rec.annotated_frames == list(range(len(video.frames)))
        for ann in rec.annotations:
            assert_decodes_to_gt(ann, video, mapping)
        # frames approximately (JPEG q95)
        for t, path in enumerate(rec.frames.paths):
            img = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
            assert np.abs(img - video.frames[t]).mean() < 3.0


def test_gt_file_is_uncompressed_rle_with_areas_bboxes(written: tuple[Path, list]) -> None:
    root, videos = written
    data = _load(root)
    ann = data["annotations"][1]  # alpha track 2: enters at frame 2
    assert ann["segmentations"][0] is None and ann["areas"][0] is None and ann["bboxes"][0] is None
    seg = ann["segmentations"][2]
    assert isinstance(seg["counts"], list) and seg["size"] == [64, 80]
    mask = videos[0].instance_maps[2] == 2
    decoded = mask_utils.decode(mask_utils.frPyObjects(seg, 64, 80)).astype(bool)
    np.testing.assert_array_equal(decoded, mask)
    assert ann["areas"][2] == int(mask.sum())
    ys, xs = np.nonzero(mask)
    assert ann["bboxes"][2] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_polygon_and_compressed_segmentations_accepted(tmp_path: Path, written: tuple[Path, list]) -> None:
    def edit(d: dict) -> None:
        d["annotations"][0]["segmentations"][0] = [[10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]]
        d["annotations"][0]["segmentations"][1] = rle(np.ones((64, 80), bool))

    ds = _read_bad(_corrupt(tmp_path, written, edit), written)
    masks0 = ds.videos[0].annotation_at(0).decode().masks[1]
    assert 350 < masks0.sum() < 500  # 20x20 polygon, rasterised by pycocotools
    assert ds.videos[0].annotation_at(1).decode().masks[1].all()


def test_unannotated_split_and_ovis_layout(tmp_path: Path, written: tuple[Path, list]) -> None:
    root, _ = written

    def edit(d: dict) -> None:
        d["annotations"] = None

    path = _corrupt(tmp_path, written, edit)
    ds = ytvis.read(tmp_path, "valid", ann_file=path, image_root=root / "train" / "JPEGImages")
    assert ds.meta["has_annotations"] is False
    assert all(v.annotations == [] and v.tracks == {} for v in ds.videos)


def test_results_round_trip(tmp_path: Path, written: tuple[Path, list]) -> None:
    root, videos = written
    ds = ytvis.read(root, "train")
    preds = predictions_from_gt(videos, [v.video_id for v in ds.videos])
    path = ytvis.write_results(tmp_path, preds, ds)
    assert path == tmp_path / "results.json"
    entries = json.loads(path.read_text())
    assert len(entries) == 5 and all(
        len(e["segmentations"]) == len(videos[e["video_id"] - 1].frames) for e in entries
    )
    assert entries[0]["segmentations"][0]["counts"] and isinstance(
        entries[0]["segmentations"][0]["counts"], str
    )
    assert entries[1]["segmentations"][0] is None  # alpha track 2 absent at frame 0
    assert_predictions_equal(ytvis.read_results(path, ds), preds)


def test_results_writer_rejects_wrong_frame_count(tmp_path: Path, written: tuple[Path, list]) -> None:
    root, videos = written
    ds = ytvis.read(root, "train")
    preds = predictions_from_gt(videos, [v.video_id for v in ds.videos])
    preds[0].tracks[0] = TrackPrediction(1, 1, 0.5, preds[0].tracks[0].masks[:-1])
    with pytest.raises(ValueError, match="5 masks for 6 frames"):
        ytvis.write_results(tmp_path, preds, ds)


def test_read_results_unknown_video(tmp_path: Path, written: tuple[Path, list]) -> None:
    ds = ytvis.read(written[0], "train")
    path = tmp_path / "r.json"
    path.write_text(
        json.dumps([{"video_id": 99, "category_id": 1, "score": 1.0, "segmentations": [None] * 6}])
    )
    with pytest.raises(AnnotationFormatError, match=r"r\.json results\[0\]: video_id 99"):
        ytvis.read_results(path, ds)


# ------------------------------------------------------------------------------------------ bad input


def test_missing_annotation_file(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="instances.json"):
        ytvis.read(tmp_path, "train")


def test_truncated_json(tmp_path: Path, written: tuple[Path, list]) -> None:
    text = (written[0] / "train" / "instances.json").read_text()
    (tmp_path / "bad.json").write_text(text[: len(text) // 2])
    with pytest.raises(AnnotationFormatError, match="bad.json: invalid or truncated JSON"):
        _read_bad(tmp_path / "bad.json", written)


def test_missing_frame_file(tmp_path: Path, written: tuple[Path, list]) -> None:
    def edit(d: dict) -> None:
        d["videos"][1]["file_names"][3] = "beta/99999.jpg"

    with pytest.raises(MissingFileError, match=r"beta/99999.jpg: frame listed in .* video id 2"):
        _read_bad(_corrupt(tmp_path, written, edit), written)


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (
            lambda d: d["annotations"][0]["segmentations"][0].update(size=[32, 80]),
            r"annotation id 1 segmentations\[0\]: RLE size \[32, 80\] does not match",
        ),
        (
            lambda d: d["annotations"][2]["segmentations"].pop(),
            r"annotation id 3: 'segmentations' has 5 entries, video 1 has 6 frames",
        ),
        (lambda d: d["videos"][0].update(length=5), r"video id 1: 'length' is 5 but 'file_names' has 6"),
        (lambda d: d["annotations"][0].update(category_id=7), r"annotation id 1: category_id 7 is not in"),
        (lambda d: d["videos"][1].update(id=1), "duplicate video id 1"),
        (lambda d: d["annotations"][1].update(id=1), r"annotations\[1\]: duplicate annotation id 1"),
        (lambda d: d["annotations"][4].update(video_id=9), r"annotation id 5: video_id 9 is not in 'videos'"),
        (lambda d: d["annotations"][0].pop("areas"), r"annotation id 1: missing field 'areas'"),
        (lambda d: d["annotations"][0].update(id=0), r"annotation id 0: annotation id must be positive"),
        # compressed RLE strings are decoded at read time: garbage, truncated, wrong pixel sum
        (lambda d: d["annotations"][0]["segmentations"].__setitem__(0, {"size": [64, 80], "counts": "\x00\x01 x"}),
         r"annotation id 1 segmentations\[0\]: RLE counts string holds a character outside"),
        (lambda d: d["annotations"][0]["segmentations"].__setitem__(0, {"size": [64, 80], "counts": "1"}),
         r"annotation id 1 segmentations\[0\]: RLE counts string has run lengths whose sum is not"),
        (lambda d: d["annotations"][0]["segmentations"].__setitem__(0, {"size": [64, 80], "counts": "0i"}),
         r"annotation id 1 segmentations\[0\]: RLE counts string ends inside a count"),
        (lambda d: d["annotations"][0]["segmentations"][0].update(size=["a", "b"]),
         r"annotation id 1 segmentations\[0\]: RLE needs 'size' \[h, w\] \(ints\)"),
        (lambda d: d["annotations"][0]["segmentations"][0].update(size=[None, None]),
         r"annotation id 1 segmentations\[0\]: RLE needs 'size'"),
        (lambda d: d["annotations"][0]["segmentations"][0].update(counts=[None]),
         r"annotation id 1 segmentations\[0\]: uncompressed RLE counts must be non-negative ints"),
        (lambda d: d["annotations"][0]["segmentations"][0].update(counts=[-10, 20, 64 * 80 - 10]),
         r"annotation id 1 segmentations\[0\]: uncompressed RLE counts must be non-negative ints"),
        (lambda d: d["annotations"][0]["segmentations"][0].update(counts=[10.0, 64 * 80 - 10]),
         r"annotation id 1 segmentations\[0\]: uncompressed RLE counts must be non-negative ints"),
        (lambda d: d["annotations"][0]["segmentations"][0].update(counts=[True, 64 * 80 - 1]),
         r"annotation id 1 segmentations\[0\]: uncompressed RLE counts must be non-negative ints"),
        (lambda d: d["annotations"][0]["segmentations"].__setitem__(0, [[10, 10, 40, 10, 40, 40, 7]]),
         r"annotation id 1 segmentations\[0\]: polygon 0 must be a flat list of x, y numbers"),
        (lambda d: d["annotations"][0]["segmentations"].__setitem__(0, [[10, 10, 40, 10]]),
         r"annotation id 1 segmentations\[0\]: polygon 0 must be a flat list"),
        (lambda d: d["annotations"][0].update(iscrowd=7), r"annotation id 1: 'iscrowd' must be 0 or 1, got 7"),
        (lambda d: d["annotations"][0]["areas"].__setitem__(0, "x"), r"annotation id 1: areas\[0\] must be a"),
        (lambda d: d["annotations"][0].update(bboxes=[[1]] * len(d["annotations"][0]["areas"])),
         r"annotation id 1: bboxes\[0\] must be \[x, y, w, h\] or null"),
        (lambda d: d.update(videos=[], annotations=[]), r"field 'videos' is empty"),
    ],
    ids=[
        "rle-size",
        "seg-length",
        "video-length",
        "unknown-category",
        "dup-video",
        "dup-ann",
        "bad-video-id",
        "no-areas",
        "zero-id",
        "rle-garbage",
        "rle-wrong-sum",
        "rle-truncated",
        "rle-size-strings",
        "rle-size-null",
        "rle-counts-null",
        "rle-counts-negative",
        "rle-counts-float",
        "rle-counts-bool",
        "polygon-odd",
        "polygon-two-points",
        "iscrowd-7",
        "area-string",
        "bbox-short",
        "no-videos",
    ],
)
def test_bad_annotation_file(tmp_path: Path, written: tuple[Path, list], edit, pattern: str) -> None:
    with pytest.raises(AnnotationFormatError, match=pattern) as info:
        _read_bad(_corrupt(tmp_path, written, edit), written)
    assert "bad.json" in str(info.value)


def test_relative_ann_file_and_image_root(written: tuple[Path, list]) -> None:
    root, _ = written
    ds = ytvis.read(root, "anything", ann_file="train/instances.json", image_root="train/JPEGImages")
    assert ds.videos[0].frames.paths[0] == root / "train/JPEGImages/alpha/00000.jpg"
    assert [v.meta["name"] for v in ds.videos] == ["alpha", "beta"]
