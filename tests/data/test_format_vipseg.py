"""VIPSeg reader/writer: raw and converted layouts, raw-value decoding rules, results, bad-input errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from _gt_builders import edit_json
from _panoptic_builders import make_video, panoptic_prediction, same_partition, track_prediction
from PIL import Image

from vidseg.data.formats import get_format, vipseg
from vidseg.data.records import (
    IGNORE_LABEL,
    AnnotationFormatError,
    Category,
    CorruptMediaError,
    MissingFileError,
    VideoPrediction,
)

BALL, GROUND, WALL, PERSON, CAR = 0, 1, 2, 3, 4
CATS = [
    Category(BALL, "ball", True, (1, 2, 3)),
    Category(GROUND, "ground", False, (4, 5, 6)),
    Category(WALL, "wall", False),
    Category(PERSON, "person", True, (7, 8, 9)),
    Category(CAR, "car", True, (10, 11, 12)),
]
THINGS = {BALL, PERSON, CAR}


def _videos():
    return [
        make_video("12_abcDEF", (GROUND, WALL), {1: PERSON, 2: PERSON, 5: BALL}, seed=5),
        make_video("7_x-y_z", (WALL, GROUND), {3: CAR, 9: BALL}, seed=6),
    ]


# raw values by hand: 1-based category * 100 + instance; 1-based 1 starts at instance 25 (values >= 125)
EXPECTED_CODES = {"12_abcDEF": {1: 400, 2: 401, 5: 125}, "7_x-y_z": {3: 500, 9: 125}}


@pytest.fixture(params=["raw", "converted"])
def written(request, tmp_path):
    videos = _videos()
    codes = vipseg.write_ground_truth(tmp_path, "val", videos, CATS, layout=request.param)
    assert codes == EXPECTED_CODES
    return tmp_path, videos


def test_raw_layout_files(tmp_path):
    videos = _videos()
    vipseg.write_ground_truth(tmp_path, "train", videos, CATS)
    assert get_format("vipseg") is vipseg
    assert (tmp_path / "train.txt").read_text().split() == ["12_abcDEF", "7_x-y_z"]
    cats = json.loads((tmp_path / "panoVIPSeg_categories.json").read_text())
    assert [(c["id"], c["isthing"]) for c in cats] == [(0, 1), (1, 0), (2, 0), (3, 1), (4, 1)]
    assert (tmp_path / "imgs" / "7_x-y_z" / "00000005.jpg").is_file()
    with Image.open(tmp_path / "panomasks" / "12_abcDEF" / "00000003.png") as im:
        assert im.mode in ("I;16", "I")  # values up to 401 need 16 bits
        raw = np.array(im).astype(int)
    gt = videos[0]
    expected = np.where(gt.semantic_maps[3] == IGNORE_LABEL, 0, gt.semantic_maps[3] + 1)
    for tid, code in EXPECTED_CODES["12_abcDEF"].items():
        expected[gt.instance_maps[3] == tid] = code
    np.testing.assert_array_equal(raw, expected)
    assert set(np.unique(raw).tolist()) == {0, 2, 3, 125, 400, 401}


def test_eight_bit_masks_when_values_fit(tmp_path):
    video = make_video("v", (GROUND, WALL), {4: BALL})
    vipseg.write_ground_truth(tmp_path, "val", [video], CATS)
    with Image.open(tmp_path / "panomasks" / "v" / "00000000.png") as im:
        assert im.mode == "L"
    labels = vipseg.read(tmp_path, "val").videos[0].annotations[0].decode()
    assert set(labels.masks) == {125}
    np.testing.assert_array_equal(labels.masks[125], video.instance_maps[0] == 4)


def test_ground_truth_round_trip(written):
    root, videos = written
    record = vipseg.read(root, "val")
    assert record.categories == [Category(c.id, c.name, c.isthing, c.color or record.categories[c.id].color)
                                 for c in CATS]  # fmt: skip
    assert [v.video_id for v in record.videos] == ["12_abcDEF", "7_x-y_z"]
    for vrec, gt in zip(record.videos, videos):
        codes = EXPECTED_CODES[gt.video_id]
        assert (vrec.num_frames, vrec.height, vrec.width) == (6, 64, 80)
        assert {t: i.category_id for t, i in vrec.tracks.items()} == {
            codes[tid]: cls for tid, cls in gt.track_categories.items()
        }
        for t, ann in enumerate(vrec.annotations):
            labels = ann.decode()
            present = {tid for tid in gt.track_categories if (gt.instance_maps[t] == tid).any()}
            assert ann.track_ids == frozenset(codes[tid] for tid in present) == set(labels.masks)
            for tid in present:
                np.testing.assert_array_equal(labels.masks[codes[tid]], gt.instance_maps[t] == tid)
            np.testing.assert_array_equal(labels.semantic, gt.semantic_maps[t])
            np.testing.assert_array_equal(labels.void, gt.semantic_maps[t] == IGNORE_LABEL)


def test_converted_layout_lists_stuff_first(tmp_path):
    vipseg.write_ground_truth(tmp_path, "val", _videos(), CATS, layout="converted")
    data = json.loads((tmp_path / "panoptic_gt_VIPSeg_val.json").read_text())
    assert [v["video_id"] for v in data["videos"]] == ["12_abcDEF", "7_x-y_z"]
    for video in data["annotations"]:
        first = video["annotations"][0]["segments_info"][0]
        assert first["category_id"] not in THINGS  # the STQ script makes the first segment crowd
    assert vipseg.read(tmp_path, "val").meta["layout"] == "converted"


@pytest.mark.parametrize("builder", [panoptic_prediction, track_prediction])
def test_results_round_trip(written, tmp_path, builder):
    root, videos = written
    record = vipseg.read(root, "val")
    preds = [builder(gt, v.frames.names) for gt, v in zip(videos, record.videos)]
    out = vipseg.write_results(tmp_path / "res", preds, record)
    assert (out / "pan_pred" / "7_x-y_z" / "00000004.png").is_file()
    pred_json = json.loads((out / "pred.json").read_text())
    assert [len(v["annotations"]) for v in pred_json["annotations"]] == [6, 6]
    back = vipseg.read_results(out, record)
    for pb, gt in zip(back, videos):
        ref = panoptic_prediction(gt, pb.frame_names)
        for (sem, inst), (rsem, _) in zip(pb.panoptic_maps, ref.panoptic_maps):
            np.testing.assert_array_equal(sem, rsem)
            np.testing.assert_array_equal(inst > 0, np.isin(rsem, list(THINGS)))
        ours = np.stack([s.astype(np.int64) * 2**20 + i + 1 for s, i in pb.panoptic_maps])
        theirs = np.stack([s.astype(np.int64) * 2**20 + i + 1 for s, i in ref.panoptic_maps])
        assert same_partition(ours, theirs)


def _raw_written(tmp_path):
    vipseg.write_ground_truth(tmp_path, "val", _videos(), CATS)
    return tmp_path


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (300, "thing code of stuff category 2"),
        (12600, "thing code with 1-based category 126 > 124"),
        (4, "stuff value of thing category 3"),
        (9, "stuff value of unknown category 8"),
        (900, "thing code of unknown category 8"),
    ],
)
def test_error_undecodable_value(tmp_path, value, reason):
    root = _raw_written(tmp_path)
    path = root / "panomasks" / "7_x-y_z" / "00000002.png"
    raw = np.array(Image.open(path)).astype(np.uint16)
    raw[50, 5] = value
    Image.fromarray(raw).save(path)
    with pytest.raises(AnnotationFormatError, match=rf"00000002\.png: undecodable panomask value {value} \({reason}"):
        vipseg.read(root, "val")


def test_error_rgb_panomask(tmp_path):
    root = _raw_written(tmp_path)
    path = root / "panomasks" / "12_abcDEF" / "00000001.png"
    Image.fromarray(np.zeros((64, 80, 3), np.uint8)).save(path)
    with pytest.raises(CorruptMediaError, match=r"00000001\.png: expected a single-channel"):
        vipseg.read(root, "val")


def test_error_missing_split_list_video_and_frame(tmp_path):
    root = _raw_written(tmp_path)
    with pytest.raises(MissingFileError, match=r"train\.txt"):
        vipseg.read(root, "train")
    (root / "imgs" / "12_abcDEF" / "00000004.jpg").unlink()
    with pytest.raises(MissingFileError, match=r"00000004\.png: panomask without a frame"):
        vipseg.read(root, "val")
    (root / "val.txt").write_text("7_x-y_z\nnot_there\n")
    with pytest.raises(MissingFileError, match="not_there"):
        vipseg.read(root, "val")


def test_error_converted_json(tmp_path):
    vipseg.write_ground_truth(tmp_path, "val", _videos(), CATS, layout="converted")
    path = tmp_path / "panoptic_gt_VIPSeg_val.json"
    data = json.loads(path.read_text())
    data["annotations"][1]["annotations"][2]["segments_info"][0]["category_id"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(AnnotationFormatError, match="unknown category_id 99"):
        vipseg.read(tmp_path, "val")
    path.write_text(json.dumps(data)[:100])
    with pytest.raises(AnnotationFormatError, match="invalid or truncated JSON"):
        vipseg.read(tmp_path, "val")


def test_writer_rejects_crowd_and_too_many_tracks(tmp_path):
    crowd = make_video("c", (GROUND, WALL), {1: PERSON}, crowd_class=CAR)
    with pytest.raises(AnnotationFormatError, match="frame 0: 128 thing-class pixels without a track"):
        vipseg.write_ground_truth(tmp_path, "val", [crowd], CATS)
    many = make_video("m", (GROUND, WALL), {})
    many.track_categories = {i: BALL for i in range(1, 77)}
    with pytest.raises(AnnotationFormatError, match="more than 75 tracks of category 0"):
        vipseg.raw_track_codes(many)


def test_results_frame_count_must_match(written, tmp_path):
    root, videos = written
    record = vipseg.read(root, "val")
    preds = [panoptic_prediction(gt, v.frames.names) for gt, v in zip(videos, record.videos)]
    out = vipseg.write_results(tmp_path / "res", preds, record)
    edit_json(out / "pred.json", lambda data: data["annotations"][0]["annotations"].pop())
    with pytest.raises(AnnotationFormatError, match="5 frames, the GT has 6"):
        vipseg.read_results(out, record)


def test_annotations_pickle_for_dataloader_workers(written):
    import pickle

    root, videos = written
    ann = vipseg.read(root, "val").videos[0].annotations[3]
    labels = pickle.loads(pickle.dumps(ann)).decode()
    np.testing.assert_array_equal(labels.masks[125], videos[0].instance_maps[3] == 5)


def test_erratum_value_200_is_void_with_warning(tmp_path):
    # VIPSeg-Dataset issue #1: 353_-5sqmCF8OFU/00000392.png holds 200 (thing code of a stuff class) = void
    root = _raw_written(tmp_path)
    path = root / "panomasks" / "7_x-y_z" / "00000002.png"
    raw = np.array(Image.open(path)).astype(np.uint16)
    raw[50:52, 5:8] = 200
    Image.fromarray(raw).save(path)
    with pytest.warns(vipseg.VIPSegErratumWarning, match=r"7_x-y_z/00000002\.png: 6 pixels of .*value 200") as rec:
        record = vipseg.read(root, "val")
    assert len([w for w in rec if issubclass(w.category, vipseg.VIPSegErratumWarning)]) == 1
    with pytest.warns(vipseg.VIPSegErratumWarning, match=r"00000002\.png: 6 pixels"):  # also from the scan cache
        vipseg.read(root, "val")
    assert issubclass(vipseg.VIPSegErratumWarning, UserWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # decoding later does not warn again
        labels = record.videos[1].annotations[2].decode()
    assert labels.void[50:52, 5:8].all() and (labels.semantic[50:52, 5:8] == IGNORE_LABEL).all()
    assert 200 not in labels.masks and 200 not in record.videos[1].tracks
    assert not any(m[50:52, 5:8].any() for m in labels.masks.values())
    other = root / "panomasks" / "7_x-y_z" / "00000003.png"
    raw = np.array(Image.open(other)).astype(np.uint16)
    raw[0, 0] = 300
    Image.fromarray(raw).save(other)
    with pytest.raises(
        AnnotationFormatError, match=r"00000003\.png: undecodable panomask value 300 \(thing code of stuff category 2"
    ):
        vipseg.read(root, "val")


def _raw_sized(root, h, w, frames=2):
    """A raw-layout val split with one video of h x w frames (ground + one person track)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "panoVIPSeg_categories.json").write_text(json.dumps(
        [{"id": c.id, "name": c.name, "isthing": int(c.isthing), "color": [1, 2, 3]} for c in CATS]
    ))  # fmt: skip
    (root / "val.txt").write_text("v\n")
    for folder in ("imgs", "panomasks"):
        (root / folder / "v").mkdir(parents=True)
    for t in range(frames):
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / "imgs" / "v" / f"{t:08d}.jpg")
        mask = np.full((h, w), GROUND + 1, np.uint16)
        mask[: h // 3, : w // 3] = (PERSON + 1) * 100
        Image.fromarray(mask).save(root / "panomasks" / "v" / f"{t:08d}.png")
    return vipseg.read(root, "val")


def _random_prediction(video, seed=0):
    rng = np.random.default_rng(seed)
    maps = []
    for _ in video.frames.names:
        sem = rng.choice([GROUND, WALL, PERSON, CAR], size=(video.height, video.width)).astype(np.int32)
        inst = np.where(np.isin(sem, [PERSON, CAR]), rng.integers(1, 4, size=sem.shape), 0).astype(np.int32)
        maps.append((sem, inst))
    return VideoPrediction(video_id=video.video_id, height=video.height, width=video.width,
                           frame_names=list(video.frames.names), panoptic_maps=maps)  # fmt: skip


def _decoded_pngs(out, video):
    """(semantic, id) maps of the written pan_pred PNGs, through pred.json's segments_info."""
    entry = json.loads((out / "pred.json").read_text())["annotations"][0]
    got = []
    for fr in entry["annotations"]:
        rgb = np.array(Image.open(out / "pan_pred" / video.video_id / fr["file_name"])).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        cls = {s["id"]: s["category_id"] for s in fr["segments_info"]}
        assert set(np.unique(ids).tolist()) - {0} == set(cls)
        lut = np.full(int(ids.max()) + 1, IGNORE_LABEL, dtype=np.int64)
        lut[list(cls)] = list(cls.values())
        got.append((lut[ids], ids))
    return got


@pytest.mark.parametrize("size", ["720p", "source"])
def test_results_raw_layout_written_at_official_720p(tmp_path, size):
    record = _raw_sized(tmp_path / "data", 360, 640)
    video = record.videos[0]
    pred = _random_prediction(video)
    out = vipseg.write_results(tmp_path / "res", [pred], record, **({} if size == "720p" else {"size": size}))
    factor = 2 if size == "720p" else 1
    for (sem, inst), (got_sem, ids) in zip(pred.panoptic_maps, _decoded_pngs(out, video)):
        assert ids.shape == (360 * factor, 640 * factor)
        up = (np.repeat(np.repeat(sem, factor, 0), factor, 1), np.repeat(np.repeat(inst, factor, 0), factor, 1))
        np.testing.assert_array_equal(got_sem, up[0])
        assert same_partition(ids[None], (up[0].astype(np.int64) * 10 + up[1])[None])
    back = vipseg.read_results(out, record)[0]
    for (sem, inst), (bsem, binst) in zip(pred.panoptic_maps, back.panoptic_maps):
        np.testing.assert_array_equal(bsem, sem)
        np.testing.assert_array_equal(binst > 0, inst > 0)


def test_results_720p_size_truncates_like_change2_720p(tmp_path):
    record = _raw_sized(tmp_path / "data", 7, 10)  # 720 * 10 / 7 = 1028.57: int() gives 1028, round() 1029
    video = record.videos[0]
    pred = _random_prediction(video, seed=1)
    out = vipseg.write_results(tmp_path / "res", [pred], record)
    ys, xs = (np.arange(720) + 0.5) * 7 / 720, (np.arange(1028) + 0.5) * 10 / 1028
    for (sem, _), (got_sem, ids) in zip(pred.panoptic_maps, _decoded_pngs(out, video)):
        assert ids.shape == (720, 1028)
        np.testing.assert_array_equal(got_sem, sem[np.floor(ys).astype(int)][:, np.floor(xs).astype(int)])
    assert [p.panoptic_maps[0][0].shape for p in vipseg.read_results(out, record)] == [(7, 10)]


def test_results_720p_frames_and_bad_size_option(tmp_path):
    record = _raw_sized(tmp_path / "data", 720, 8, frames=1)
    out = vipseg.write_results(tmp_path / "res", [_random_prediction(record.videos[0])], record)
    with Image.open(out / "pan_pred" / "v" / "00000000.png") as im:
        assert im.size == (8, 720)
    with pytest.raises(ValueError, match="size must be one of"):
        vipseg.write_results(tmp_path / "res2", [_random_prediction(record.videos[0])], record, size="1080p")
    Image.fromarray(np.zeros((10, 8, 3), np.uint8)).save(out / "pan_pred" / "v" / "00000000.png")
    with pytest.raises(CorruptMediaError, match=r"00000000\.png: PNG size 10x8"):
        vipseg.read_results(out, record)


def test_results_converted_layout_keep_frame_size(written, tmp_path):
    root, videos = written
    record = vipseg.read(root, "val")
    preds = [panoptic_prediction(gt, v.frames.names) for gt, v in zip(videos, record.videos)]
    out = vipseg.write_results(tmp_path / "res", preds, record)
    with Image.open(out / "pan_pred" / "7_x-y_z" / "00000000.png") as im:
        expected = (80, 64) if record.meta["layout"] == "converted" else (900, 720)  # int(720 * 80 / 64)
        assert im.size == expected
