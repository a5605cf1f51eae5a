"""Cityscapes-VPS reader/writer: GT and result round trips, official layout, and bad-input errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _gt_builders import edit_json
from _panoptic_builders import (
    cityscapes_videos,
    crowd_mask,
    make_video,
    panoptic_prediction,
    same_partition,
    track_prediction,
)
from PIL import Image

from vidseg.data.formats import cityscapes_vps, get_format
from vidseg.data.formats.common import id_to_rgb, rgb_to_id
from vidseg.data.records import IGNORE_LABEL, AnnotationFormatError, MissingFileError

ROAD, BUILDING, SKY, PERSON, RIDER, CAR, BUS = 0, 2, 10, 11, 12, 13, 15
THINGS = set(range(11, 19))


@pytest.fixture
def written(tmp_path):
    videos = cityscapes_videos()
    mapping = cityscapes_vps.write_ground_truth(tmp_path, "val", videos, cityscapes_vps.default_categories())
    assert mapping == {"v0": "0001", "v1": "0002"}
    return tmp_path, videos


def _gt_json(root):
    return json.loads((root / "panoptic_gt_val_city_vps.json").read_text())


def _edit_json(root, edit):
    edit_json(root / "panoptic_gt_val_city_vps.json", edit)


def test_layout(written):
    root, videos = written
    data = _gt_json(root)
    assert get_format("cityscapes_vps") is cityscapes_vps
    assert [c["id"] for c in data["categories"] if c["isthing"]] == list(range(11, 19))
    assert len(data["images"]) == len(data["annotations"]) == 12
    first = data["annotations"][0]
    assert first["image_id"] == "0001_0000_synthetic_000001_000000"
    assert first["file_name"] == "0001_0000_synthetic_000001_000000_gtFine_color.png"
    assert data["images"][1]["file_name"] == "0001_0005_synthetic_000001_000005_leftImg8bit.png"
    assert (root / "val" / "img" / data["images"][1]["file_name"]).is_file()
    names = [a["file_name"] for a in data["annotations"]]
    assert names == sorted(names)  # the official VPQ script zips sorted PNG names with the JSON order
    ids = rgb_to_id(np.array(Image.open(root / "val" / "panoptic_video" / first["file_name"])))
    areas = {s["id"]: s["area"] for s in first["segments_info"]}
    assert {int(i): int((ids == i).sum()) for i in np.unique(ids) if i} == areas
    crowd = [s for s in first["segments_info"] if s["iscrowd"]]
    assert [s["category_id"] for s in crowd] == [CAR] and crowd[0]["area"] == 8 * 16
    assert (ids == 0).sum() == 4 * 80  # void rows


def test_ground_truth_round_trip(written):
    root, videos = written
    record = cityscapes_vps.read(root, "val")
    assert [v.video_id for v in record.videos] == ["0001", "0002"]
    assert [c.id for c in record.categories if c.isthing] == list(range(11, 19))
    for vrec, gt in zip(record.videos, videos):
        assert (vrec.num_frames, vrec.height, vrec.width) == (6, 64, 80)
        assert {t: i.category_id for t, i in vrec.tracks.items()} == gt.track_categories
        for t, ann in enumerate(vrec.annotations):
            assert ann.frame == t
            labels = ann.decode()
            present = {tid for tid in gt.track_categories if (gt.instance_maps[t] == tid).any()}
            assert ann.track_ids == frozenset(present) == set(labels.masks)
            for tid in present:
                np.testing.assert_array_equal(labels.masks[tid], gt.instance_maps[t] == tid)
            np.testing.assert_array_equal(labels.semantic, gt.semantic_maps[t])
            np.testing.assert_array_equal(labels.void, gt.semantic_maps[t] == IGNORE_LABEL)
            covered = np.any([m for m in labels.masks.values()], axis=0)
            np.testing.assert_array_equal(np.isin(labels.semantic, list(THINGS)) & ~covered,
                                          crowd_mask(gt, t, THINGS))  # fmt: skip
    assert record.videos[1].annotations[0].track_ids == frozenset({1, 4})


@pytest.mark.parametrize("builder", [panoptic_prediction, track_prediction])
def test_results_round_trip(written, tmp_path, builder):
    root, videos = written
    record = cityscapes_vps.read(root, "val")
    preds = [builder(gt, v.frames.names, video_id=v.video_id) for gt, v in zip(videos, record.videos)]
    out = cityscapes_vps.write_results(tmp_path / "res", preds, record)
    pred_json = json.loads((out / "pred.json").read_text())
    assert [a["image_id"] for a in pred_json["annotations"]] == [a["image_id"] for a in _gt_json(root)["annotations"]]
    back = cityscapes_vps.read_results(out, record)
    for pb, gt in zip(back, videos):
        ref = panoptic_prediction(gt, pb.frame_names)
        for (sem, inst), (rsem, _) in zip(pb.panoptic_maps, ref.panoptic_maps):
            np.testing.assert_array_equal(sem, rsem)
            np.testing.assert_array_equal(inst > 0, np.isin(rsem, list(THINGS)))  # stuff -> instance 0
        # tube identity: ids over the whole video relabel the reference (class, instance) pairs one-to-one
        ours = np.stack([s.astype(np.int64) * 2**20 + i for s, i in pb.panoptic_maps])
        theirs = np.stack([s.astype(np.int64) * 2**20 + i + 1 for s, i in ref.panoptic_maps])
        assert same_partition(ours + 1, theirs)


def test_results_shifted_prediction_keeps_ids_constant(written, tmp_path):
    root, videos = written
    record = cityscapes_vps.read(root, "val")
    preds = [
        panoptic_prediction(gt, v.frames.names, shift=3, video_id=v.video_id) for gt, v in zip(videos, record.videos)
    ]
    out = cityscapes_vps.write_results(tmp_path / "res", preds, record)
    stuff_ids = set()
    for a in json.loads((out / "pred.json").read_text())["annotations"][:6]:
        stuff_ids.add(tuple(s["id"] for s in a["segments_info"] if s["category_id"] in (SKY, ROAD)))
        assert a["segments_info"][0]["category_id"] not in THINGS  # stuff listed first
    assert len(stuff_ids) == 1


def test_error_png_id_not_in_segments_info(written):
    root, _ = written
    png = root / "val" / "panoptic_video" / "0002_0010_synthetic_000002_000010_gtFine_color.png"
    rgb = np.array(Image.open(png))
    rgb[40, 40] = id_to_rgb(np.array(99999))
    Image.fromarray(rgb).save(png)
    ann = cityscapes_vps.read(root, "val").videos[1].annotations[2]
    with pytest.raises(AnnotationFormatError, match=r"000010_gtFine_color\.png: PNG segment id 99999"):
        ann.decode()


def test_error_listed_segment_absent_and_area(written):
    root, _ = written
    _edit_json(root, lambda d: d["annotations"][3]["segments_info"].append(
        {"id": 4242, "category_id": SKY, "iscrowd": 0, "area": 1}))  # fmt: skip
    with pytest.raises(AnnotationFormatError, match="segments_info id 4242 does not occur"):
        cityscapes_vps.read(root, "val").videos[0].annotations[3].decode()
    _edit_json(root, lambda d: d["annotations"][3]["segments_info"].pop())
    _edit_json(root, lambda d: d["annotations"][3]["segments_info"][0].update(area=7))
    with pytest.raises(AnnotationFormatError, match=r"has area 7 in the JSON"):
        cityscapes_vps.read(root, "val").videos[0].annotations[3].decode()


def test_error_unknown_category(written):
    root, _ = written
    _edit_json(root, lambda d: d["annotations"][5]["segments_info"][0].update(category_id=77))
    with pytest.raises(AnnotationFormatError, match=r"annotations\[5\] segments_info\[0\]: unknown category_id 77"):
        cityscapes_vps.read(root, "val")


def test_error_track_changes_category(written):
    root, _ = written
    data = _gt_json(root)
    seg = next(s for s in data["annotations"][2]["segments_info"] if s["id"] == 1)
    seg["category_id"] = BUS
    (root / "panoptic_gt_val_city_vps.json").write_text(json.dumps(data))
    with pytest.raises(AnnotationFormatError, match="segment 1 has category 15"):
        cityscapes_vps.read(root, "val")


def test_error_truncated_json_and_missing_files(written):
    root, _ = written
    path = root / "panoptic_gt_val_city_vps.json"
    text = path.read_text()
    (root / "val" / "panoptic_video" / "0001_0015_synthetic_000001_000015_gtFine_color.png").unlink()
    with pytest.raises(MissingFileError, match="000015_gtFine_color.png"):
        cityscapes_vps.read(root, "val")
    path.write_text(text[: len(text) // 2])
    with pytest.raises(AnnotationFormatError, match="invalid or truncated JSON"):
        cityscapes_vps.read(root, "val")
    with pytest.raises(MissingFileError, match="panoptic_gt_test_city_vps.json"):
        cityscapes_vps.read(root, "test")


def test_results_errors(written, tmp_path):
    root, videos = written
    record = cityscapes_vps.read(root, "val")
    preds = [panoptic_prediction(gt, v.frames.names, video_id=v.video_id) for gt, v in zip(videos, record.videos)]
    with pytest.raises(AnnotationFormatError, match=r"none for \['0002'\]"):
        cityscapes_vps.write_results(tmp_path / "r0", preds[:1], record)
    out = cityscapes_vps.write_results(tmp_path / "r1", preds, record)
    edit_json(out / "pred.json", lambda data: data["annotations"][0]["segments_info"].pop())
    with pytest.raises(AnnotationFormatError, match="is not in segments_info"):
        cityscapes_vps.read_results(out, record)


def test_writer_requires_six_frames(tmp_path):
    video = make_video("0007", (SKY, ROAD), {1: PERSON})
    video.frames, video.instance_maps, video.semantic_maps = (
        video.frames[:5],
        video.instance_maps[:5],
        video.semantic_maps[:5],
    )
    with pytest.raises(AnnotationFormatError, match="has 5 frames"):
        cityscapes_vps.write_ground_truth(tmp_path, "val", [video], cityscapes_vps.default_categories())
    cityscapes_vps.write_ground_truth(tmp_path, "val", [video], cityscapes_vps.default_categories(),
                                      frames_per_video=None)  # fmt: skip
    assert cityscapes_vps.read(tmp_path, "val").videos[0].video_id == "0007"


def _official_img_all(root, split, vids=("0001", "0002"), shuffle=True):
    """img_all/ + im_all_info_<split>_city_vps.json as the official fetch_city_images.py leaves them: raw
    Cityscapes-sequence file names (no <vid>_<frame>_ prefix), numeric ids video * 10000 + frame."""
    all_dir = root / split / "img_all"
    all_dir.mkdir(parents=True)
    images = []
    for vid in vids:
        for f in range(30):
            name = f"synthetic_{int(vid):06d}_{f:06d}_leftImg8bit.png"
            Image.fromarray(np.full((64, 80, 3), f, np.uint8)).save(all_dir / name)
            images.append({"id": int(vid) * 10000 + f, "file_name": name, "height": 64, "width": 80})
    if shuffle:
        images = images[::-1]  # listing order does not matter: frames are ordered by id % 10000
    (root / f"im_all_info_{split}_city_vps.json").write_text(json.dumps({"images": images}))
    return all_dir


def test_all_frames_from_official_img_all(written, tmp_path):
    root, videos = written
    all_dir = _official_img_all(root, "val")
    record = cityscapes_vps.read(root, "val", all_frames=True)
    vrec = record.videos[0]
    assert vrec.num_frames == 30 and vrec.annotated_frames == [0, 5, 10, 15, 20, 25]
    assert vrec.frames.paths[7] == all_dir / "synthetic_000001_000007_leftImg8bit.png"
    assert vrec.meta["image_ids"][10] == "0001_0010_synthetic_000001_000010"
    np.testing.assert_array_equal(vrec.annotation_at(10).decode().semantic, videos[0].semantic_maps[2])
    assert {t: i.category_id for t, i in vrec.tracks.items()} == videos[0].track_categories
    # results for the annotated frames of an all-frames record keep the GT image ids and order
    preds = [panoptic_prediction(gt, [v.frames.names[f] for f in v.annotated_frames], video_id=v.video_id)
             for gt, v in zip(videos, record.videos)]  # fmt: skip
    out = cityscapes_vps.write_results(tmp_path / "res", preds, record)
    assert [a["image_id"] for a in json.loads((out / "pred.json").read_text())["annotations"]] == [
        a["image_id"] for a in _gt_json(root)["annotations"]
    ]
    assert len(cityscapes_vps.read_results(out, record)[1].panoptic_maps) == 6


def test_all_frames_errors(written):
    root, _ = written
    with pytest.raises(MissingFileError, match="im_all_info_val_city_vps.json"):
        cityscapes_vps.read(root, "val", all_frames=True)
    all_dir = _official_img_all(root, "val")
    info = root / "im_all_info_val_city_vps.json"
    text = info.read_text()
    (all_dir / "synthetic_000002_000013_leftImg8bit.png").unlink()
    with pytest.raises(MissingFileError, match="synthetic_000002_000013_leftImg8bit.png"):
        cityscapes_vps.read(root, "val", all_frames=True)
    edit_json(info, lambda d: d["images"].pop(next(i for i, im in enumerate(d["images"]) if im["id"] == 20015)))
    msg = r"im_all_info_val_city_vps.json: video 0002 has no frame synthetic_000002_000015 \(annotated frame 0002_0015"
    with pytest.raises(AnnotationFormatError, match=msg):
        cityscapes_vps.read(root, "val", all_frames=True)
    info.write_text(text)
    edit_json(info, lambda d: d.update(images=[im for im in d["images"] if im["id"] // 10000 != 1]))
    with pytest.raises(AnnotationFormatError, match=r"id // 10000 == 1 \(video 0001\)"):
        cityscapes_vps.read(root, "val", all_frames=True)
    info.write_text(text)
    edit_json(info, lambda d: d["images"][3].update(id="10003"))
    msg = r"im_all_info_val_city_vps.json: images\[3\]: field 'id' must be int"
    with pytest.raises(AnnotationFormatError, match=msg):
        cityscapes_vps.read(root, "val", all_frames=True)
    edit_json(info, lambda d: d["images"][3].update(id=10004))
    with pytest.raises(AnnotationFormatError, match=r"images\[\d+\]: duplicate image id 10004"):
        cityscapes_vps.read(root, "val", all_frames=True)


def test_prefixed_img_all_is_not_the_official_layout(written):
    """img_all/<vid>_<frame>_... names without im_all_info json: not what the official scripts produce."""
    root, _ = written
    (root / "val" / "img_all").mkdir()
    for p in (root / "val" / "img").iterdir():
        (root / "val" / "img_all" / p.name).write_bytes(p.read_bytes())
    with pytest.raises(MissingFileError, match="im_all_info_val_city_vps.json: required JSON file"):
        cityscapes_vps.read(root, "val", all_frames=True)


def _test_split(tmp_path, keep_img=True):
    """The released test split: panoptic_im_test_city_vps.json (annotated frames, no annotations), test/img
    (fetched by fetch_city_images.py) and test/img_all + im_all_info_test_city_vps.json; no GT."""
    videos = cityscapes_videos()
    cityscapes_vps.write_ground_truth(tmp_path, "test", videos, cityscapes_vps.default_categories())
    gt = tmp_path / "panoptic_gt_test_city_vps.json"
    edit_json(gt, lambda d: d.update(annotations=[], categories=[]), out=tmp_path / "panoptic_im_test_city_vps.json")
    gt.unlink()
    for p in (tmp_path / "test" / "panoptic_video").iterdir():
        p.unlink()
    (tmp_path / "test" / "panoptic_video").rmdir()
    if not keep_img:
        for p in (tmp_path / "test" / "img").iterdir():
            p.unlink()
        (tmp_path / "test" / "img").rmdir()
    _official_img_all(tmp_path, "test")
    return videos


@pytest.mark.parametrize("all_frames", [False, True])
def test_test_split_without_gt_writes_results(tmp_path, all_frames):
    videos = _test_split(tmp_path / "data", keep_img=not all_frames)
    record = cityscapes_vps.read(tmp_path / "data", "test", all_frames=all_frames)
    assert [c.id for c in record.categories if c.isthing] == list(range(11, 19))  # defaults ('categories': [])
    assert record.meta["ground_truth"] is False
    assert [v.video_id for v in record.videos] == ["0001", "0002"]
    for v in record.videos:
        assert v.annotations == [] and v.tracks == {}
        assert v.num_frames == (30 if all_frames else 6) and (v.height, v.width) == (64, 80)
    frames = sorted(record.videos[1].meta["image_ids"])
    assert frames == ([0, 5, 10, 15, 20, 25] if all_frames else list(range(6)))
    preds = [panoptic_prediction(gt, [v.frames.names[f] for f in sorted(v.meta["image_ids"])], video_id=v.video_id)
             for gt, v in zip(videos, record.videos)]  # fmt: skip
    out = cityscapes_vps.write_results(tmp_path / "res", preds, record)
    ids = [a["image_id"] for a in json.loads((out / "pred.json").read_text())["annotations"]]
    assert len(ids) == 12 and ids == sorted(ids) and ids[1] == "0001_0005_synthetic_000001_000005"
    assert (out / "pan_pred" / f"{ids[7]}.png").is_file()
    back = cityscapes_vps.read_results(out, record)
    np.testing.assert_array_equal(back[0].panoptic_maps[2][0], preds[0].panoptic_maps[2][0])


def test_test_split_errors(tmp_path):
    _test_split(tmp_path)
    im_json = tmp_path / "panoptic_im_test_city_vps.json"
    edit_json(im_json, lambda d: d["images"][2].pop("height"))
    msg = r"panoptic_im_test_city_vps.json: images\[2\]: missing field 'height'"
    with pytest.raises(AnnotationFormatError, match=msg):
        cityscapes_vps.read(tmp_path, "test")
    im_json.unlink()
    with pytest.raises(MissingFileError, match="panoptic_gt_test_city_vps.json.*panoptic_im_test_city_vps.json"):
        cityscapes_vps.read(tmp_path, "test")
    with pytest.raises(MissingFileError, match="panoptic_gt_train_city_vps.json"):  # only test has no GT
        cityscapes_vps.read(tmp_path, "train")


@pytest.mark.parametrize("value", ["no", 2, None, 0.5])
def test_error_iscrowd_not_boolean(written, value):
    root, _ = written
    _edit_json(root, lambda d: d["annotations"][4]["segments_info"][1].update(iscrowd=value))
    msg = r"panoptic_gt_val_city_vps.json: annotations\[4\] segments_info\[1\] \(segment \d+\): 'iscrowd' must be"
    with pytest.raises(AnnotationFormatError, match=msg):
        cityscapes_vps.read(root, "val")


def test_iscrowd_booleans_accepted(written):
    root, videos = written
    data = _gt_json(root)
    for ann in data["annotations"]:
        for s in ann["segments_info"]:
            s["iscrowd"] = bool(s["iscrowd"])
    (root / "panoptic_gt_val_city_vps.json").write_text(json.dumps(data))
    record = cityscapes_vps.read(root, "val")
    assert {t: i.category_id for t, i in record.videos[0].tracks.items()} == videos[0].track_categories
    crowd = [s for s in data["annotations"][0]["segments_info"] if s["iscrowd"] is True]
    assert crowd and crowd[0]["id"] not in record.videos[0].tracks


def test_annotations_pickle_for_dataloader_workers(written):
    import pickle

    root, videos = written
    ann = cityscapes_vps.read(root, "val").videos[1].annotations[3]
    labels = pickle.loads(pickle.dumps(ann)).decode()
    np.testing.assert_array_equal(labels.semantic, videos[1].semantic_maps[3])
    np.testing.assert_array_equal(labels.masks[4], videos[1].instance_maps[3] == 4)
