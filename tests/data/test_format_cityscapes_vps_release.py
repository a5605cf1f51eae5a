"""Cityscapes-VPS ground truth as released (``<split>/cls/`` + ``<split>/inst/``): the same split as the prepared
panoptic_video layout, the conversion rules against a direct transcription, and bad input."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from _panoptic_builders import cityscapes_videos, crowd_mask, make_video, panoptic_prediction, same_partition
from PIL import Image

from vidseg.data.formats import cityscapes_vps
from vidseg.data.formats._cityscapes_vps_release import ColourTable, panoptic_map
from vidseg.data.records import IGNORE_LABEL, AnnotationFormatError, Category, CorruptMediaError, MissingFileError

ROAD, BUILDING, SKY, PERSON, RIDER, CAR, BUS = 0, 2, 10, 11, 12, 13, 15
THINGS = set(range(11, 19))
FIRST = "0001_0000_synthetic_000001_000000"


@pytest.fixture
def released(tmp_path):
    """Both layouts of one split: the prepared panoptic_video + GT JSON, and the released cls/ + inst/."""
    videos = cityscapes_videos()
    cats = cityscapes_vps.default_categories()
    cityscapes_vps.write_ground_truth(tmp_path, "val", videos, cats, release_labels=True)
    return tmp_path, videos


def test_release_layout(released):
    root, videos = released
    rgba = np.array(Image.open(root / "val" / "cls" / f"{FIRST}_gtFine_color.png"))
    inst = np.array(Image.open(root / "val" / "inst" / f"{FIRST}_gtFine_instanceIds.png"))
    assert rgba.shape == (64, 80, 3) and inst.dtype == np.uint16
    assert tuple(rgba[40, 0]) == (128, 64, 128) and tuple(rgba[0, 0]) == (0, 0, 0)  # road, void
    assert inst[40, 0] == ROAD and set(np.unique(inst[videos[0].instance_maps[0] == 2])) == {CAR * 1000 + 2}
    listed = json.loads((root / "panoptic_im_val_city_vps.json").read_text())
    assert len(listed["images"]) == 12 and listed["categories"][CAR]["color"] == [0, 0, 142]


def test_release_reads_as_the_prepared_layout(released):
    root, videos = released
    prepared = cityscapes_vps.read(root, "val")
    release = cityscapes_vps.read(root, "val", labels="cls_inst")
    assert release.meta["annotation_order"] == prepared.meta["annotation_order"]
    for vp, vr, gt in zip(prepared.videos, release.videos, videos):
        assert (vr.video_id, vr.frames.paths, vr.height, vr.width) == (vp.video_id, vp.frames.paths, 64, 80)
        # track ids are class * 1000 + k there, the track id here
        assert {t: i.category_id for t, i in vr.tracks.items()} == {
            c * 1000 + t: c for t, c in gt.track_categories.items()
        }
        for t, (ap, ar) in enumerate(zip(vp.annotations, vr.annotations)):
            lp, lr = ap.decode(), ar.decode()
            assert ar.track_ids == frozenset(lr.masks) == {gt.track_categories[k] * 1000 + k for k in ap.track_ids}
            for tid, mask in lp.masks.items():
                np.testing.assert_array_equal(lr.masks[gt.track_categories[tid] * 1000 + tid], mask)
            crowd = crowd_mask(gt, t, THINGS)  # the official panoptic GT has no crowd segments: void
            np.testing.assert_array_equal(lr.semantic, np.where(crowd, IGNORE_LABEL, lp.semantic))
            np.testing.assert_array_equal(lr.void, lp.void | crowd)
    assert crowd_mask(videos[0], 0, THINGS).any()


def test_auto_takes_the_release_without_the_gt_json(released, tmp_path):
    root, videos = released
    (root / "panoptic_gt_val_city_vps.json").unlink()
    record = cityscapes_vps.read(root, "val")
    assert sorted(record.videos[1].tracks) == [CAR * 1000 + 1, BUS * 1000 + 4]
    with pytest.raises(MissingFileError, match="panoptic_gt_val_city_vps.json"):
        cityscapes_vps.read(root, "val", labels="panoptic_video")
    # results from a release-read split keep the official annotation order (sorted label file names)
    preds = [panoptic_prediction(gt, v.frames.names, video_id=v.video_id) for gt, v in zip(videos, record.videos)]
    out = cityscapes_vps.write_results(tmp_path / "res", preds, record)
    order = [a["image_id"] for a in json.loads((out / "pred.json").read_text())["annotations"]]
    assert order == sorted(order) and order[0] == FIRST
    back = cityscapes_vps.read_results(out, record)
    assert same_partition(back[1].panoptic_maps[2][1] + 1, videos[1].instance_maps[2] + 1)
    ann = pickle.loads(pickle.dumps(record.videos[1].annotations[3]))  # DataLoader workers get it pickled
    np.testing.assert_array_equal(ann.decode().masks[BUS * 1000 + 4], videos[1].instance_maps[3] == 4)


def _reference_panoptic(rgb: np.ndarray, inst: np.ndarray, cats: list[Category]) -> np.ndarray:
    """The release rules, pixel set by pixel set: stuff colours keep their class; each inst value >= 1000 takes
    its most frequent colour (the smallest packed value on a tie) and, when that is a thing, all its pixels."""
    rgb = rgb.astype(np.int64)
    colour = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    by_colour = {c.color[0] + 256 * c.color[1] + 65536 * c.color[2]: c for c in cats}
    pan = np.full(colour.shape, -1, dtype=np.int64)
    for value in np.unique(colour).tolist():
        cat = by_colour.get(value)
        if cat is not None and not cat.isthing:
            pan[colour == value] = cat.id
    for value in np.unique(inst).tolist():
        if value < 1000:
            continue
        where = inst == value
        colours, counts = np.unique(colour[where], return_counts=True)
        cat = by_colour.get(int(colours[np.argmax(counts)]))
        if cat is not None and cat.isthing:
            pan[where] = cat.id * 1000 + value % 1000
    return pan


@pytest.mark.parametrize("seed", range(6))
def test_conversion_matches_the_rules(tmp_path, seed):
    cats = cityscapes_vps.default_categories()
    rng = np.random.default_rng(seed)
    palette = np.array([cats[i].color for i in (ROAD, SKY, PERSON, RIDER, CAR, BUS)] + [(0, 0, 0), (1, 2, 3)])
    blocks = rng.integers(0, len(palette), size=(6, 8))
    rgb = palette[np.kron(blocks, np.ones((5, 5), dtype=np.int64))].astype(np.uint8)  # 30 x 40
    inst = rng.choice([0, 7, 11, 255, 11001, 11002, 13001, 26001, 24999], size=(3, 4)).astype(np.uint16)
    inst = np.kron(inst, np.ones((10, 10), dtype=np.uint16))
    # a tie: 50 person + 50 car pixels -> person (smaller packed colour); an instance over unknown colours
    rgb[:10, :5], rgb[:10, 5:10] = cats[PERSON].color, cats[CAR].color
    inst[:10, :10] = 12345
    rgb[20:, 30:] = (1, 2, 3)
    inst[20:, 30:] = 13002
    rgb[10:20, :5], rgb[10:20, 5:10] = (1, 2, 3), cats[CAR].color  # a tie with an unknown, smaller colour: dropped
    inst[10:20, :10] = 14444
    alpha = np.full((30, 40, 1), 255 if seed % 2 else 7, dtype=np.uint8)
    Image.fromarray(np.concatenate([rgb, alpha], axis=2) if seed % 3 == 0 else rgb).save(tmp_path / "c.png")
    Image.fromarray(inst).save(tmp_path / "i.png")
    ours = panoptic_map(tmp_path / "c.png", tmp_path / "i.png", (30, 40), ColourTable.of(cats, "test"))
    np.testing.assert_array_equal(ours, _reference_panoptic(rgb, inst, cats))
    assert ours[0, 0] == PERSON * 1000 + 345 and (ours[20:, 30:] == -1).all() and (ours[10:20, :10] == -1).all()


def test_conversion_with_noisy_colours(tmp_path):
    """A cls PNG with a colour per pixel (resampled or compressed): the pairs that occur are counted."""
    cats = cityscapes_vps.default_categories()
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    rgb[rng.random((60, 80)) < 0.4] = cats[CAR].color
    rgb[:30][rng.random((30, 80)) < 0.5] = cats[PERSON].color
    inst = np.kron(rng.integers(1000, 1030, size=(6, 8)), np.ones((10, 10), dtype=np.int64)).astype(np.uint16)
    inst[:, :10] = 0  # no instance: random colours there are void
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(inst).save(tmp_path / "i.png")
    ours = panoptic_map(tmp_path / "c.png", tmp_path / "i.png", (60, 80), ColourTable.of(cats, "test"))
    np.testing.assert_array_equal(ours, _reference_panoptic(rgb, inst, cats))
    assert (ours >= 11000).any() and (ours[:, :10] == -1).any()


def test_release_errors(released):
    root, _ = released
    cls_dir, inst_dir = root / "val" / "cls", root / "val" / "inst"
    with pytest.raises(ValueError, match="labels='pan'"):
        cityscapes_vps.read(root, "val", labels="pan")
    (inst_dir / f"{FIRST}_gtFine_instanceIds.png").rename(root / "moved.png")
    with pytest.raises(MissingFileError, match=f"inst/{FIRST}_gtFine_instanceIds.png: inst PNG of image {FIRST}"):
        cityscapes_vps.read(root, "val", labels="cls_inst")
    Image.fromarray(np.zeros((64, 80, 3), dtype=np.uint8)).save(inst_dir / f"{FIRST}_gtFine_instanceIds.png")
    with pytest.raises(CorruptMediaError, match="instanceIds.png: expected a single-channel"):
        cityscapes_vps.read(root, "val", labels="cls_inst")
    (root / "moved.png").rename(inst_dir / f"{FIRST}_gtFine_instanceIds.png")
    (cls_dir / f"{FIRST}_gtFine_color.png").rename(cls_dir / f"{FIRST}_final_mask.png")  # the new-image naming
    cityscapes_vps.read(root, "val", labels="cls_inst")
    Image.new("RGB", (80, 64)).save(cls_dir / f"{FIRST}_gtFine_color.png")
    with pytest.raises(AnnotationFormatError, match=f"a second cls PNG for image {FIRST}"):
        cityscapes_vps.read(root, "val", labels="cls_inst")
    (cls_dir / f"{FIRST}_gtFine_color.png").unlink()
    Image.new("RGB", (80, 64)).save(cls_dir / "0009_0000_x_000009_000000_gtFine_color.png")
    with pytest.raises(AnnotationFormatError, match="image id '0009_0000_x_000009_000000' is not an image of"):
        cityscapes_vps.read(root, "val", labels="cls_inst")
    (cls_dir / "0009_0000_x_000009_000000_gtFine_color.png").unlink()
    Image.new("RGB", (40, 64)).save(cls_dir / f"{FIRST}_final_mask.png")
    with pytest.raises(CorruptMediaError, match="final_mask.png: PNG size 64x40"):
        cityscapes_vps.read(root, "val", labels="cls_inst")


def test_release_json_errors(released):
    root, _ = released
    listed = root / "panoptic_im_val_city_vps.json"
    data = json.loads(listed.read_text())
    del data["categories"][CAR]["color"]
    listed.write_text(json.dumps(data))
    with pytest.raises(AnnotationFormatError, match="category 13 \\(car\\) has no RGB 'color'"):
        cityscapes_vps.read(root, "val", labels="cls_inst")
    del data["categories"]  # without categories: the 19 Cityscapes classes and colours
    listed.write_text(json.dumps(data))
    assert len(cityscapes_vps.read(root, "val", labels="cls_inst").categories) == 19
    listed.unlink()
    with pytest.raises(MissingFileError, match="panoptic_im_val_city_vps.json: the frame list of the released GT"):
        cityscapes_vps.read(root, "val", labels="cls_inst")
    (root / "panoptic_gt_val_city_vps.json").unlink()
    (root / "val" / "inst").rename(root / "val" / "inst_old")
    nor = "panoptic_gt_val_city_vps.json: required GT JSON does not exist \\(nor the released .*/cls and"
    with pytest.raises(MissingFileError, match=nor):
        cityscapes_vps.read(root, "val")


def test_release_writer_errors(tmp_path):
    video = make_video("v0", (SKY, ROAD), {1000: PERSON})
    with pytest.raises(AnnotationFormatError, match="track id 1000 does not fit below 1000"):
        cityscapes_vps.write_ground_truth(tmp_path, "val", [video], cityscapes_vps.default_categories(),
                                          release_labels=True)  # fmt: skip
    uncoloured = [Category(id=c.id, name=c.name, isthing=c.isthing) for c in cityscapes_vps.default_categories()]
    with pytest.raises(AnnotationFormatError, match="has no RGB 'color'"):
        cityscapes_vps.write_ground_truth(tmp_path / "b", "val", [make_video("v0", (SKY, ROAD), {1: CAR})],
                                          uncoloured, release_labels=True)  # fmt: skip


def test_synthetic_dataset_reads_the_same_from_both_layouts(tmp_path):
    from vidseg.data import synthetic

    params = synthetic.SyntheticParams(videos_train=3, videos_val=2)
    root = synthetic.generate("cityscapes_vps", tmp_path / "city", params)
    for split in ("train", "val"):
        prepared = cityscapes_vps.read(root, split)
        release = cityscapes_vps.read(root, split, labels="cls_inst")
        assert [v.video_id for v in release.videos] == [v.video_id for v in prepared.videos]
        for vp, vr in zip(prepared.videos, release.videos):
            assert {t: i.category_id for t, i in vr.tracks.items()} == {
                i.category_id * 1000 + t: i.category_id for t, i in vp.tracks.items()
            }
            for ap, ar in zip(vp.annotations, vr.annotations):
                lp, lr = ap.decode(), ar.decode()
                np.testing.assert_array_equal(lr.semantic, lp.semantic)  # no crowd in the synthetic scenes
                renamed = {vp.tracks[t].category_id * 1000 + t: m for t, m in lp.masks.items()}
                assert set(lr.masks) == set(renamed) == ar.track_ids
                for t, mask in renamed.items():
                    np.testing.assert_array_equal(lr.masks[t], mask)
