"""KITTI-STEP reader/writer: GT and result round trips, track-id mapping, and bad-input errors."""

from __future__ import annotations

import numpy as np
import pytest
from _panoptic_builders import crowd_mask, make_video, panoptic_prediction, track_prediction
from PIL import Image

from vidseg.data.formats import get_format, kitti_step
from vidseg.data.records import (
    IGNORE_LABEL,
    AnnotationFormatError,
    Category,
    CorruptMediaError,
    MissingFileError,
)

PERSON, CAR, ROAD, SKY = 11, 13, 0, 10


def _videos():
    return [
        make_video("0002", (SKY, ROAD), {1: PERSON, 2: CAR, 3: CAR}, crowd_class=PERSON, seed=1),
        make_video("0006", (ROAD, SKY), {1: CAR, 7: PERSON}, seed=2),
    ]


@pytest.fixture
def written(tmp_path):
    videos = _videos()
    kitti_step.write_ground_truth(tmp_path, "val", videos, kitti_step.default_categories())
    return tmp_path, videos


def test_default_vocabulary():
    cats = kitti_step.default_categories()
    assert [c.id for c in cats] == list(range(19))
    assert [c.name for c in cats][10:14] == ["sky", "person", "rider", "car"]
    assert [c.id for c in cats if c.isthing] == [11, 13]
    assert get_format("kitti_step") is kitti_step


def test_layout_and_encoding(written):
    root, videos = written
    png = root / "panoptic_maps" / "val" / "0002" / "000003.png"
    assert (root / "images" / "val" / "0002" / "000003.png").is_file()
    rgb = np.array(Image.open(png))
    assert rgb.shape == (64, 80, 3)
    np.testing.assert_array_equal(rgb[..., 0], videos[0].semantic_maps[3])
    np.testing.assert_array_equal(rgb[..., 1].astype(int) * 256 + rgb[..., 2], videos[0].instance_maps[3])


def test_ground_truth_round_trip(written):
    root, videos = written
    record = kitti_step.read(root, "val")
    assert record.format == "kitti_step" and record.split == "val"
    assert [c.id for c in record.categories] == list(range(19))
    assert [v.video_id for v in record.videos] == ["0002", "0006"]
    for vrec, gt in zip(record.videos, videos):
        assert (vrec.height, vrec.width, vrec.num_frames) == (64, 80, 6)
        assert vrec.frames.names == [f"{t:06d}" for t in range(6)]
        expected_ids = {(cls << 16) | tid: cls for tid, cls in gt.track_categories.items()}
        assert {t: info.category_id for t, info in vrec.tracks.items()} == expected_ids
        assert vrec.annotated_frames == list(range(6))
        for t, ann in enumerate(vrec.annotations):
            labels = ann.decode()
            present = {tid for tid in gt.track_categories if (gt.instance_maps[t] == tid).any()}
            expected = {(gt.track_categories[tid] << 16) | tid for tid in present}
            assert ann.track_ids == frozenset(expected) == set(labels.masks)
            for tid in present:
                key = (gt.track_categories[tid] << 16) | tid
                np.testing.assert_array_equal(labels.masks[key], gt.instance_maps[t] == tid)
            np.testing.assert_array_equal(labels.semantic, gt.semantic_maps[t])
            assert labels.semantic.dtype == np.int32
            np.testing.assert_array_equal(labels.void, gt.semantic_maps[t] == IGNORE_LABEL)
            covered = np.zeros((64, 80), bool)
            for m in labels.masks.values():
                covered |= m
            crowd = np.isin(labels.semantic, [PERSON, CAR]) & ~covered
            np.testing.assert_array_equal(crowd, crowd_mask(gt, t, {PERSON, CAR}))
    assert crowd_mask(videos[0], 0, {PERSON, CAR}).sum() == 8 * 16


def test_custom_vocabulary_via_sidecar(tmp_path):
    cats = [Category(0, "ground", False), Category(1, "wall", False), Category(2, "ball", True)]
    video = make_video("s0", (0, 1), {5: 2, 9: 2}, crowd_class=2)
    kitti_step.write_ground_truth(tmp_path, "train", [video], cats)
    record = kitti_step.read(tmp_path, "train")
    assert record.categories == cats
    labels = record.videos[0].annotations[4].decode()
    assert set(labels.masks) == {(2 << 16) | 5, (2 << 16) | 9}
    np.testing.assert_array_equal(labels.semantic, video.semantic_maps[4])


@pytest.mark.parametrize("builder", [panoptic_prediction, track_prediction])
def test_results_round_trip(written, tmp_path, builder):
    root, videos = written
    record = kitti_step.read(root, "val")
    preds = [builder(gt, vrec.frames.names) for gt, vrec in zip(videos, record.videos)]
    out = kitti_step.write_results(tmp_path / "res", preds, record)
    assert sorted(p.name for p in (out / "0006").iterdir()) == [f"{t:06d}.png" for t in range(6)]
    back = kitti_step.read_results(out, record)
    assert [p.video_id for p in back] == ["0002", "0006"]
    for pred_back, gt in zip(back, videos):
        ref = panoptic_prediction(gt, pred_back.frame_names)
        assert pred_back.frame_names == [f"{t:06d}" for t in range(6)]
        for (sem, inst), (rsem, rinst) in zip(pred_back.panoptic_maps, ref.panoptic_maps):
            np.testing.assert_array_equal(sem, rsem)
            np.testing.assert_array_equal(inst, rinst)  # KITTI keeps instance ids exactly


def test_results_missing_frame_and_bad_class(written, tmp_path):
    root, videos = written
    record = kitti_step.read(root, "val")
    short = panoptic_prediction(videos[0], record.videos[0].frames.names[:5])
    short.panoptic_maps = short.panoptic_maps[:5]
    with pytest.raises(AnnotationFormatError, match="lacks frame '000005'"):
        kitti_step.write_results(tmp_path / "r1", [short], record)
    bad = panoptic_prediction(videos[0], record.videos[0].frames.names)
    bad.panoptic_maps[2][0][0, 0] = 19
    with pytest.raises(AnnotationFormatError, match="semantic id 19"):
        kitti_step.write_results(tmp_path / "r2", [bad], record)


def test_error_not_three_channels(written):
    root, _ = written
    png = root / "panoptic_maps" / "val" / "0002" / "000001.png"
    Image.fromarray(np.zeros((64, 80), np.uint8), mode="L").save(png)
    with pytest.raises(CorruptMediaError, match=r"0002/000001\.png.*3-channel"):
        kitti_step.read(root, "val")


def test_error_wrong_size(written):
    root, _ = written
    png = root / "panoptic_maps" / "val" / "0002" / "000004.png"
    Image.fromarray(np.zeros((32, 80, 3), np.uint8)).save(png)
    with pytest.raises(CorruptMediaError, match=r"000004\.png: PNG size 32x80"):
        kitti_step.read(root, "val")


@pytest.mark.parametrize(
    ("png", "pixel", "value", "match"),
    [
        ("0006/000002.png", (10, 10, 0), 40, r"0006/000002\.png: semantic id 40"),
        ("0002/000000.png", (40, 70), (ROAD, 0, 3), "instance id 3 on stuff class 0"),
    ],
    ids=["bad_semantic_id", "instance_on_stuff"],
)
def test_error_bad_panoptic_value(written, png, pixel, value, match):
    root, _ = written
    path = root / "panoptic_maps" / "val" / png
    rgb = np.array(Image.open(path))
    rgb[pixel] = value
    Image.fromarray(rgb).save(path)
    with pytest.raises(AnnotationFormatError, match=match):
        kitti_step.read(root, "val")


def test_error_mask_without_frame_and_missing_split(written):
    root, _ = written
    with pytest.raises(MissingFileError, match=r"images/train"):
        kitti_step.read(root, "train")
    (root / "images" / "val" / "0006" / "000005.png").unlink()
    with pytest.raises(MissingFileError, match=r"0006/000005\.png: panoptic map without a frame"):
        kitti_step.read(root, "val")


def test_writer_rejects_inconsistent_ground_truth(tmp_path):
    video = make_video("0001", (SKY, ROAD), {1: PERSON})
    video.semantic_maps[2][8, 14] = CAR  # a pixel of track 1 with another class
    with pytest.raises(AnnotationFormatError, match="frame 2: track 1"):
        kitti_step.write_ground_truth(tmp_path, "val", [video], kitti_step.default_categories())
    stuff_track = make_video("0001", (SKY, ROAD), {1: ROAD})
    with pytest.raises(AnnotationFormatError, match="stuff category 0"):
        kitti_step.write_ground_truth(tmp_path, "val", [stuff_track], kitti_step.default_categories())


def test_results_reader_rejects_unknown_frame(written, tmp_path):
    root, videos = written
    record = kitti_step.read(root, "val")
    preds = [panoptic_prediction(gt, v.frames.names) for gt, v in zip(videos, record.videos)]
    out = kitti_step.write_results(tmp_path / "res", preds, record)
    (out / "0002" / "000003.png").rename(out / "0002" / "000099.png")
    with pytest.raises(AnnotationFormatError, match=r"000099\.png: not a frame"):
        kitti_step.read_results(out, record)


def test_test_split_without_annotations_and_pickling(written):
    import pickle

    root, videos = written
    (root / "images" / "val").rename(root / "images" / "test")
    record = kitti_step.read(root, "test")
    assert [v.annotations for v in record.videos] == [[], []] and record.videos[0].num_frames == 6
    (root / "images" / "test").rename(root / "images" / "val")
    ann = kitti_step.read(root, "val").videos[0].annotations[2]
    labels = pickle.loads(pickle.dumps(ann)).decode()
    np.testing.assert_array_equal(labels.semantic, videos[0].semantic_maps[2])


def test_error_16_bit_panoptic_png(written):
    # PIL keeps only the high byte of a 16-bit RGB PNG: read as is, every pixel would become class 0
    import cv2

    root, _ = written
    png = root / "panoptic_maps" / "val" / "0002" / "000002.png"
    rgb = np.array(Image.open(png)).astype(np.uint16)
    cv2.imwrite(str(png), rgb[..., ::-1])  # BGR order, 16 bits per channel
    with pytest.raises(CorruptMediaError, match=r"0002/000002\.png: expected an 8-bit RGB PNG, got 16 bits"):
        kitti_step.read(root, "val")


def test_error_frame_without_panoptic_map(written):
    # KITTI-STEP labels every frame of train/val: a missing map is an error, not an unannotated frame
    root, _ = written
    (root / "panoptic_maps" / "val" / "0006" / "000001.png").unlink()
    with pytest.raises(MissingFileError, match=r"0006/000001\.png: panoptic map of frame .*0006/000001"):
        kitti_step.read(root, "val")
