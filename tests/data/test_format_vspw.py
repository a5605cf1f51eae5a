"""VSPW reader/writer: GT and result round trips, mask value mapping, and bad-input errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _panoptic_builders import make_video
from PIL import Image

from vidseg.data.formats import get_format, vspw
from vidseg.data.records import (
    IGNORE_LABEL,
    AnnotationFormatError,
    Category,
    CorruptMediaError,
    MissingFileError,
    VideoPrediction,
)

CATS = [Category(0, "wall", False), Category(1, "floor", False), Category(2, "sky", False), Category(3, "chair", False)]


def _videos():
    # semantic-only videos: the builder's "track" boxes just paint class 3 / 2 regions
    return [make_video("1001_abc", (0, 1), {1: 3, 2: 2}, seed=7), make_video("42_x_y", (2, 0), {5: 3}, seed=8)]


@pytest.fixture
def written(tmp_path):
    videos = _videos()
    vspw.write_ground_truth(tmp_path, "val", videos, CATS)
    return tmp_path, videos


def test_layout_and_mask_values(written):
    root, videos = written
    assert get_format("vspw") is vspw
    assert (root / "val.txt").read_text().split() == ["1001_abc", "42_x_y"]
    assert json.loads((root / "label_num_dic_final.json").read_text()) == {
        "others": "0", "wall": "1", "floor": "2", "sky": "3", "chair": "4",
    }  # fmt: skip
    assert (root / "data" / "42_x_y" / "origin" / "00000005.jpg").is_file()
    mask = np.array(Image.open(root / "data" / "1001_abc" / "mask" / "00000002.png"))
    sem = videos[0].semantic_maps[2]
    np.testing.assert_array_equal(mask, np.where(sem == IGNORE_LABEL, 255, sem + 1))


def test_ground_truth_round_trip(written):
    root, videos = written
    record = vspw.read(root, "val")
    assert record.categories == CATS
    assert [v.video_id for v in record.videos] == ["1001_abc", "42_x_y"]
    for vrec, gt in zip(record.videos, videos):
        assert (vrec.num_frames, vrec.height, vrec.width) == (6, 64, 80)
        assert vrec.tracks == {} and vrec.annotated_frames == list(range(6))
        for t, ann in enumerate(vrec.annotations):
            labels = ann.decode()
            assert labels.masks == {} and ann.track_ids == frozenset()
            np.testing.assert_array_equal(labels.semantic, gt.semantic_maps[t])
            np.testing.assert_array_equal(labels.void, gt.semantic_maps[t] == IGNORE_LABEL)


def test_others_is_ignored_and_default_vocabulary(written):
    root, _ = written
    path = root / "data" / "42_x_y" / "mask" / "00000001.png"
    im = Image.open(path)
    mask = np.array(im)
    mask[40:44, 0:10] = 0  # "others"
    out = Image.fromarray(mask, mode="P")
    out.putpalette(im.getpalette())
    out.save(path)
    (root / "label_num_dic_final.json").unlink()
    record = vspw.read(root, "val")
    assert len(record.categories) == 124 and record.categories[123].name == "class_123"
    labels = record.videos[1].annotations[1].decode()
    assert (labels.semantic[40:44, 0:10] == IGNORE_LABEL).all() and labels.void[40:44, 0:10].all()
    assert labels.semantic[50, 50] == 0  # value 1 -> class 0


def test_results_round_trip(written, tmp_path):
    root, videos = written
    record = vspw.read(root, "val")
    preds = []
    for gt, v in zip(videos, record.videos):
        maps = [np.where(s == IGNORE_LABEL, 1, s).astype(np.int32) for s in gt.semantic_maps]
        preds.append(VideoPrediction(v.video_id, 64, 80, v.frames.names, semantic_maps=maps))
    out = vspw.write_results(tmp_path / "sub", preds, record)
    assert sorted(p.name for p in (out / "42_x_y").iterdir()) == [f"{t:08d}.png" for t in range(6)]
    back = vspw.read_results(out, record)
    for pb, p in zip(back, preds):
        assert pb.frame_names == p.frame_names
        for a, b in zip(pb.semantic_maps, p.semantic_maps):
            np.testing.assert_array_equal(a, b)


def test_results_reject_void_and_out_of_range(written, tmp_path):
    root, videos = written
    record = vspw.read(root, "val")
    v = record.videos[0]
    with_void = VideoPrediction(v.video_id, 64, 80, v.frames.names, semantic_maps=videos[0].semantic_maps)
    with pytest.raises(AnnotationFormatError, match="class id 255 outside 0..3"):
        vspw.write_results(tmp_path / "s1", [with_void], record)
    zeros = VideoPrediction(v.video_id, 64, 80, v.frames.names, semantic_maps=[np.zeros((64, 80), np.int32)] * 6)
    vspw.write_results(tmp_path / "s2", [zeros], record)
    bad = tmp_path / "s2" / v.video_id / f"{v.frames.names[3]}.png"
    Image.fromarray(np.full((64, 80), 9, np.uint8)).save(bad)
    (tmp_path / "s2" / "42_x_y").mkdir()
    with pytest.raises(AnnotationFormatError, match=r"00000003\.png: class id 9 outside 0..3"):
        vspw.read_results(tmp_path / "s2", record)


def test_error_mask_value_out_of_range(written):
    root, _ = written
    path = root / "data" / "1001_abc" / "mask" / "00000004.png"
    Image.fromarray(np.full((64, 80), 7, np.uint8), mode="L").save(path)
    ann = vspw.read(root, "val").videos[0].annotations[4]
    with pytest.raises(AnnotationFormatError, match=r"00000004\.png: mask value 7 is not 0 \(others\), 1..4"):
        ann.decode()


def test_error_rgb_mask_and_wrong_size(written):
    root, _ = written
    path = root / "data" / "1001_abc" / "mask" / "00000000.png"
    Image.fromarray(np.zeros((64, 80, 3), np.uint8)).save(path)
    with pytest.raises(CorruptMediaError, match="single-channel"):
        vspw.read(root, "val").videos[0].annotations[0].decode()
    Image.fromarray(np.zeros((60, 80), np.uint8)).save(path)
    with pytest.raises(CorruptMediaError, match="PNG size 60x80"):
        vspw.read(root, "val").videos[0].annotations[0].decode()


def test_error_missing_files(written):
    root, _ = written
    with pytest.raises(MissingFileError, match=r"test\.txt"):
        vspw.read(root, "test")
    (root / "data" / "42_x_y" / "origin" / "00000003.jpg").unlink()
    with pytest.raises(MissingFileError, match=r"00000003\.png: mask without a frame"):
        vspw.read(root, "val")
    (root / "val.txt").write_text("1001_abc\nghost\n")
    with pytest.raises(MissingFileError, match="ghost"):
        vspw.read(root, "val")


def test_error_bad_names_file_and_writer_vocabulary(written, tmp_path):
    root, videos = written
    (root / "label_num_dic_final.json").write_text(json.dumps({"others": "0", "wall": "1", "sky": "3"}))
    with pytest.raises(AnnotationFormatError, match="without gaps"):
        vspw.read(root, "val")
    with pytest.raises(AnnotationFormatError, match="0..N-1"):
        vspw.write_ground_truth(tmp_path / "w", "val", videos, [Category(1, "a", False), Category(2, "b", False)])


def test_annotations_pickle_for_dataloader_workers(written):
    import pickle

    root, videos = written
    ann = vspw.read(root, "val").videos[1].annotations[5]
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(ann)).decode().semantic, videos[1].semantic_maps[5])


def test_error_frame_without_mask(written):
    root, _ = written
    (root / "data" / "42_x_y" / "mask" / "00000002.png").unlink()
    with pytest.raises(MissingFileError, match=r"42_x_y/mask/00000002\.png: mask of frame"):
        vspw.read(root, "val")


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"1001_abc\n\xff\xfe42_x_y\n", r"val\.txt: split list is not UTF-8 text"),
     (b"\n  \n", r"val\.txt: split list names no video")],
    ids=["not_utf8", "empty"],
)
def test_error_bad_split_list(written, content, match):
    root, _ = written
    (root / "val.txt").write_bytes(content)
    with pytest.raises(AnnotationFormatError, match=match):
        vspw.read(root, "val")
