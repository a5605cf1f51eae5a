"""DAVIS 2017 format: GT round trip (masks, void, prompts), results round trip and bad-input errors."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from _gt_builders import (
    CATEGORIES,
    assert_decodes_to_gt,
    assert_predictions_equal,
    make_videos,
    predictions_from_gt,
    rle,
)
from PIL import Image

from vidseg.data.formats import davis, get_format
from vidseg.data.formats.common import davis_palette, write_index_png
from vidseg.data.records import (
    IGNORE_LABEL,
    AnnotationFormatError,
    CorruptMediaError,
    MissingFileError,
    TrackPrediction,
)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("davis")
    videos = make_videos()
    davis.write_ground_truth(root, "val", videos, CATEGORIES, void_from_semantic=True)
    return root, videos


@pytest.fixture()
def copy(tmp_path: Path, written: tuple[Path, list]) -> Path:
    """A private copy of the written dataset that a test may damage."""
    return shutil.copytree(written[0], tmp_path / "davis")


def test_registry_points_here() -> None:
    assert get_format("davis") is davis


def test_layout_and_palette(written: tuple[Path, list]) -> None:
    root, _ = written
    assert (root / "ImageSets/2017/val.txt").read_text() == "alpha\nbeta\n"
    assert (root / "JPEGImages/480p/alpha/00000.jpg").is_file()
    with Image.open(root / "Annotations/480p/beta/00006.png") as im:
        assert im.mode == "P" and im.getpalette()[:768] == davis_palette()


def test_gt_round_trip_masks_void_prompts(written: tuple[Path, list]) -> None:
    root, videos = written
    ds = davis.read(root, "val")
    assert (
        ds.format == "davis" and ds.categories == [] and [v.video_id for v in ds.videos] == ["alpha", "beta"]
    )
    for video, rec in zip(videos, ds.videos):
        assert (rec.height, rec.width, rec.num_frames) == (64, 80, len(video.frames))
        assert rec.frames.names == [f"{t:05d}" for t in range(len(video.frames))]
        assert sorted(rec.tracks) == sorted(video.track_categories)
        assert rec.meta["num_objects"] == max(video.track_categories)
        assert all(t.category_id is None for t in rec.tracks.values())
        assert rec.annotated_frames == list(range(len(video.frames)))
        for ann in rec.annotations:
            labels = assert_decodes_to_gt(ann, video)
            void = (video.semantic_maps[ann.frame] == IGNORE_LABEL) & (video.instance_maps[ann.frame] == 0)
            np.testing.assert_array_equal(labels.void, void)
        first = {
            k: min(t for t in range(len(video.frames)) if (video.instance_maps[t] == k).any())
            for k in video.track_categories
        }
        assert [(p.track_id, p.frame) for p in rec.prompts] == sorted(first.items())
    # alpha's object 2 enters at frame 2: its prompt is there
    assert ds.videos[0].prompts[1].frame == 2


def test_first_frame_only_like_test_sets(tmp_path: Path) -> None:
    videos = make_videos()
    davis.write_ground_truth(tmp_path, "test-dev", videos, CATEGORIES, first_frame_only=True)
    ds = davis.read(tmp_path, "test-dev")
    for rec in ds.videos:
        assert rec.annotated_frames == [0] and rec.num_frames > 1
    assert [(p.track_id, p.frame) for p in ds.videos[0].prompts] == [(1, 0), (3, 0)]
    assert ds.videos[0].meta["objects_never_visible"] == [2]


def test_results_round_trip(tmp_path: Path, written: tuple[Path, list]) -> None:
    root, videos = written
    ds = davis.read(root, "val")
    preds = predictions_from_gt(videos, [v.video_id for v in ds.videos], scores=False, categories=False)
    out = davis.write_results(tmp_path / "res", preds, ds)
    assert sorted(p.name for p in (out / "alpha").iterdir()) == [f"{t:05d}.png" for t in range(6)]
    assert_predictions_equal(davis.read_results(out, ds), preds)


def test_results_overlap_higher_score_wins(tmp_path: Path, written: tuple[Path, list]) -> None:
    root, videos = written
    ds = davis.read(root, "val")
    preds = predictions_from_gt(videos, [v.video_id for v in ds.videos], scores=False, categories=False)
    full = rle(np.ones((64, 80), bool))
    preds[1].tracks[0] = TrackPrediction(1, None, 0.1, [full] * 7)  # covers everything, lowest score
    preds[1].tracks[1] = TrackPrediction(2, None, 0.9, preds[1].tracks[1].masks)
    davis.write_results(tmp_path, preds, ds)
    arr = np.asarray(Image.open(tmp_path / "beta/00000.png"))
    expected = np.where(videos[1].instance_maps[0] == 2, 2, 1)
    np.testing.assert_array_equal(arr, expected)


def test_results_writer_rejects_id_above_n(tmp_path: Path, written: tuple[Path, list]) -> None:
    root, videos = written
    ds = davis.read(root, "val")
    preds = predictions_from_gt(videos, [v.video_id for v in ds.videos], scores=False, categories=False)
    preds[1].tracks[0].track_id = 3  # beta has N = 2
    with pytest.raises(ValueError, match=r"video 'beta'.*track id 3 is not an object"):
        davis.write_results(tmp_path, preds, ds)


def test_read_results_missing_frame(tmp_path: Path, written: tuple[Path, list]) -> None:
    root, videos = written
    ds = davis.read(root, "val")
    preds = predictions_from_gt(videos, [v.video_id for v in ds.videos], scores=False, categories=False)
    davis.write_results(tmp_path, preds, ds)
    (tmp_path / "beta/00006.png").unlink()
    with pytest.raises(MissingFileError, match=r"beta/00006.png: result PNG of frame '00006'"):
        davis.read_results(tmp_path, ds)


# ------------------------------------------------------------------------------------------ bad input


def test_missing_image_set(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match=r"ImageSets/2017/train.txt"):
        davis.read(tmp_path, "train")


def test_image_set_entry_without_folder(copy: Path) -> None:
    (copy / "ImageSets/2017/val.txt").write_text("alpha\ngamma\n")
    with pytest.raises(MissingFileError, match=r"JPEGImages/480p/gamma: frame folder of sequence 'gamma'"):
        davis.read(copy, "val")


def test_missing_annotation_folder(copy: Path) -> None:
    shutil.rmtree(copy / "Annotations/480p/beta")
    with pytest.raises(MissingFileError, match=r"Annotations/480p/beta: annotation folder"):
        davis.read(copy, "val")


def test_rgb_png_is_rejected(copy: Path) -> None:
    path = copy / "Annotations/480p/alpha/00003.png"
    rgb = np.asarray(Image.open(path).convert("RGB"))
    Image.fromarray(rgb, mode="RGB").save(path)
    with pytest.raises(CorruptMediaError, match=r"alpha/00003.png: expected an indexed .* got mode RGB"):
        davis.read(copy, "val")


@pytest.mark.parametrize(
    ("png", "shape", "object_id", "error", "match"),
    [
        ("beta/00002.png", (32, 80), 0, CorruptMediaError, r"beta/00002.png: PNG size 32x80 .* video's 64x80"),
        # beta's N is 2
        ("beta/00004.png", (64, 80), 3, AnnotationFormatError, r"beta/00004.png: object id 3 is above .* N=2"),
        ("alpha/00042.png", (64, 80), 0, AnnotationFormatError, r"alpha/00042.png: annotation of frame '00042'"),
    ],
    ids=["wrong_size", "id_above_object_count", "annotation_without_frame"],
)
def test_bad_annotation_png_is_rejected(
    copy: Path, png: str, shape: tuple[int, int], object_id: int, error: type[Exception], match: str
) -> None:
    labels = np.zeros(shape, np.uint8)
    labels[5:9, 5:9] = object_id
    write_index_png(copy / "Annotations/480p" / png, labels)
    with pytest.raises(error, match=match):
        davis.read(copy, "val")


def test_truncated_png_is_corrupt(copy: Path) -> None:
    path = copy / "Annotations/480p/alpha/00001.png"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(CorruptMediaError, match=r"alpha/00001.png"):
        davis.read(copy, "val")


def test_writer_rejects_max_id_not_in_first_frame(tmp_path: Path) -> None:
    videos = make_videos()
    videos[0].instance_maps[0][videos[0].instance_maps[0] == 3] = 0  # N would be 1, ids 2, 3 come later
    with pytest.raises(ValueError, match=r"'alpha': the largest object id 3 is not in frame 0"):
        davis.write_ground_truth(tmp_path, "val", videos, CATEGORIES)


def test_missing_middle_annotation(copy: Path) -> None:
    (copy / "Annotations/480p/alpha/00003.png").unlink()
    with pytest.raises(
        AnnotationFormatError, match=r"alpha/00003.png: missing; sequence 'alpha' has 5 annotation"
    ):
        davis.read(copy, "val")


def test_records_pickle_for_dataloader_workers(written: tuple[Path, list]) -> None:
    ds = davis.read(written[0], "val")
    ann = pickle.loads(pickle.dumps(ds.videos[1].annotations[3]))
    np.testing.assert_array_equal(ann.decode().masks[1], written[1][1].instance_maps[3] == 1)


def test_image_set_not_utf8(copy: Path) -> None:
    (copy / "ImageSets/2017/val.txt").write_bytes(b"alpha\n\xff\xfebeta\n")
    with pytest.raises(AnnotationFormatError, match=r"ImageSets/2017/val\.txt: .*is not UTF-8 text"):
        davis.read(copy, "val")
