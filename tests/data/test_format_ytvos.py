"""YouTube-VOS format: dense and sparse GT round trips, results round trip and bad-input errors."""

from __future__ import annotations

import json
import shutil
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
)
from PIL import Image

from vidseg.data.formats import get_format, ytvos
from vidseg.data.formats.common import write_index_png
from vidseg.data.records import AnnotationFormatError, CorruptMediaError, MissingFileError


def _first(video, k: int) -> int:
    return min(t for t in range(len(video.frames)) if (video.instance_maps[t] == k).any())


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("ytvos")
    videos = make_videos()
    ytvos.write_ground_truth(root, "train", videos, CATEGORIES)
    ytvos.write_ground_truth(root, "valid", videos, CATEGORIES, sparse=True)
    return root, videos


@pytest.fixture()
def copy(tmp_path: Path, written: tuple[Path, list]) -> Path:
    return shutil.copytree(written[0], tmp_path / "ytvos")


def _edit_meta(root: Path, split: str, edit) -> None:
    edit_json(root / split / "meta.json", edit)


def test_registry_points_here() -> None:
    assert get_format("ytvos") is ytvos


def test_dense_round_trip(written: tuple[Path, list]) -> None:
    root, videos = written
    ds = ytvos.read(root, "train")
    # categories: names used by the tracks, ids 1..C alphabetically
    assert [(c.id, c.name) for c in ds.categories] == [(1, "car"), (2, "dog"), (3, "person")]
    name_of = {c.id: c.name for c in CATEGORIES}
    for video, rec in zip(videos, ds.videos):
        assert rec.video_id == video.video_id and rec.meta["sparse"] is False
        assert rec.frames.names == [f"{5 * t:05d}" for t in range(len(video.frames))]
        assert (rec.height, rec.width) == (64, 80)
        assert {k: ds.categories[t.category_id - 1].name for k, t in rec.tracks.items()} == {
            k: name_of[c] for k, c in video.track_categories.items()
        }
        assert rec.annotated_frames == list(range(len(video.frames)))
        for ann in rec.annotations:
            assert assert_decodes_to_gt(ann, video).void is None
        assert [(p.track_id, p.frame) for p in rec.prompts] == [
            (k, _first(video, k)) for k in sorted(rec.tracks)
        ]
        for t, path in enumerate(rec.frames.paths):
            img = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
            assert np.abs(img - video.frames[t]).mean() < 3.0


def test_scan_agrees_with_meta(written: tuple[Path, list]) -> None:
    a = ytvos.read(written[0], "train")
    b = ytvos.read(written[0], "train", scan_annotations=True)
    assert [[x.track_ids for x in v.annotations] for v in a.videos] == [
        [x.track_ids for x in v.annotations] for v in b.videos
    ]


def test_sparse_valid_round_trip(written: tuple[Path, list]) -> None:
    root, videos = written
    ds = ytvos.read(root, "valid")
    alpha, beta = ds.videos
    assert alpha.meta["sparse"] is True
    # alpha: objects 1, 3 at frame 0, object 2 enters at frame 2; beta: both at frame 0
    assert alpha.annotated_frames == [0, 2] and beta.annotated_frames == [0]
    assert [(p.track_id, p.frame) for p in alpha.prompts] == [(1, 0), (2, 2), (3, 0)]
    assert alpha.annotations[1].track_ids == frozenset({2})
    for p in alpha.prompts + beta.prompts:
        video = videos[0] if p in alpha.prompts else videos[1]
        rec = alpha if p in alpha.prompts else beta
        mask = rec.annotation_at(p.frame).decode().masks[p.track_id]
        np.testing.assert_array_equal(mask, video.instance_maps[p.frame] == p.track_id)
    meta = json.loads((root / "valid/meta.json").read_text())
    assert meta["videos"]["alpha"]["objects"]["2"]["frames"] == ["00010", "00015", "00020", "00025"]


def test_results_round_trip(tmp_path: Path, written: tuple[Path, list]) -> None:
    root, videos = written
    ds = ytvos.read(root, "valid")
    preds = predictions_from_gt(videos, [v.video_id for v in ds.videos], scores=False, categories=False)
    folder = ytvos.write_results(tmp_path, preds, ds)
    assert folder == tmp_path / "Annotations"
    assert sorted(p.name for p in (folder / "beta").iterdir()) == [f"{5 * t:05d}.png" for t in range(7)]
    assert_predictions_equal(ytvos.read_results(tmp_path, ds), preds)
    assert_predictions_equal(ytvos.read_results(folder, ds), preds)


def test_results_writer_rejects_unknown_object(tmp_path: Path, written: tuple[Path, list]) -> None:
    ds = ytvos.read(written[0], "valid")
    preds = predictions_from_gt(written[1], [v.video_id for v in ds.videos], scores=False, categories=False)
    preds[1].tracks[1].track_id = 7
    with pytest.raises(ValueError, match=r"video 'beta': track id 7 is not an object"):
        ytvos.write_results(tmp_path, preds, ds)


# ------------------------------------------------------------------------------------------ bad input


def test_missing_meta(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match=r"train/meta.json"):
        ytvos.read(tmp_path, "train")


def test_meta_frame_that_does_not_exist(copy: Path) -> None:
    _edit_meta(copy, "train", lambda m: m["videos"]["beta"]["objects"]["2"]["frames"].append("00099"))
    with pytest.raises(
        AnnotationFormatError, match=r"meta.json video 'beta' object '2': listed frame '00099'"
    ):
        ytvos.read(copy, "train")


def test_meta_objects_not_a_dict(copy: Path) -> None:
    _edit_meta(copy, "train", lambda m: m["videos"]["alpha"].update(objects=[1, 2]))
    with pytest.raises(AnnotationFormatError, match=r"meta.json video 'alpha': field 'objects' must be dict"):
        ytvos.read(copy, "train")


def test_meta_bad_object_id(copy: Path) -> None:
    _edit_meta(copy, "train", lambda m: m["videos"]["alpha"]["objects"].update({"x": {"frames": []}}))
    with pytest.raises(AnnotationFormatError, match=r"object 'x': object ids must be integers"):
        ytvos.read(copy, "train")


def test_missing_annotation_folder(copy: Path) -> None:
    shutil.rmtree(copy / "train/Annotations/alpha")
    with pytest.raises(
        MissingFileError, match=r"train/Annotations/alpha: annotation folder of video 'alpha'"
    ):
        ytvos.read(copy, "train")


@pytest.mark.parametrize(
    ("png", "object_id", "match"),
    [
        ("beta/00000.png", 9, r"beta/00000.png: object id 9 is not an object"),  # the sparse PNGs are scanned
        ("alpha/00010.png", 0, r"video 'alpha' object 2: no annotation PNG"),  # object 2's only PNG, emptied
    ],
    ids=["unknown_object_when_scanned", "object_never_annotated"],
)
def test_bad_sparse_annotation_png_is_rejected(copy: Path, png: str, object_id: int, match: str) -> None:
    labels = np.zeros((64, 80), np.uint8)
    labels[1:5, 1:5] = object_id
    write_index_png(copy / "valid/Annotations" / png, labels)
    with pytest.raises(AnnotationFormatError, match=match):
        ytvos.read(copy, "valid")


def test_rgb_png_rejected_at_read(copy: Path) -> None:
    path = copy / "train/Annotations/beta/00010.png"
    Image.fromarray(np.zeros((64, 80, 3), np.uint8), mode="RGB").save(path)
    with pytest.raises(CorruptMediaError, match=r"beta/00010.png: expected an indexed"):
        ytvos.read(copy, "train")


def test_wrong_size_png_rejected_at_decode(copy: Path) -> None:
    ds = ytvos.read(copy, "train", check_pngs=False)
    write_index_png(copy / "train/Annotations/alpha/00005.png", np.zeros((60, 80), np.uint8))
    with pytest.raises(CorruptMediaError, match=r"alpha/00005.png: PNG size 60x80"):
        ds.videos[0].annotation_at(1).decode()


@pytest.mark.parametrize(
    ("split", "png"),
    [("train", "beta/00010.png"), ("valid", "alpha/00010.png")],
    ids=["dense_frame", "first_appearance"],
)
def test_missing_annotation_png_is_an_error(copy: Path, split: str, png: str) -> None:
    # a lost PNG must not turn a train video into a "sparse" one, nor lose an object's first appearance
    (copy / split / "Annotations" / png).unlink()
    with pytest.raises(MissingFileError, match=rf"{split}/Annotations/{png}: annotation PNG of a frame that .*"
                                               r"meta\.json lists"):
        ytvos.read(copy, split)


def test_object_listed_in_meta_but_not_in_its_png(copy: Path) -> None:
    # train track ids come from meta.json (PNGs not decoded at read); decoding checks the PNG holds them
    path = copy / "train/Annotations/beta/00010.png"
    labels = np.array(Image.open(path))
    gone = int(np.unique(labels[labels > 0])[0])
    labels[labels == gone] = 0
    write_index_png(path, labels)
    video = next(v for v in ytvos.read(copy, "train").videos if v.video_id == "beta")
    ann = next(a for a in video.annotations if a.label_map == path)
    assert gone in ann.track_ids
    with pytest.raises(AnnotationFormatError, match=rf"beta/00010\.png: .*meta\.json lists object {gone} in this "
                                                    "frame, but the PNG does not hold it"):
        ann.decode()
