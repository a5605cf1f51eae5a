"""ClipDataset end to end on a tiny hand-written YouTube-VIS dataset (and a label-map dataset for VSS)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch.utils.data import DataLoader

from vidseg.data.clip_dataset import ClipDataset, distance_peak
from vidseg.data.formats import ytvis
from vidseg.data.records import (
    IGNORE_LABEL,
    AnnotationFormatError,
    Category,
    CorruptMediaError,
    DatasetRecord,
    FrameAnnotation,
    FrameLabels,
    FrameSource,
    GroundTruthVideo,
    VideoRecord,
)
from vidseg.data.sampling import InstanceClipSampler, SemanticClipSampler, VOSClipSampler
from vidseg.data.transforms import ClipTransform
from vidseg.data.video import open_frames

H, W = 48, 64
CATEGORIES = [Category(1, "one"), Category(2, "two"), Category(3, "three")]
COLOUR = {1: 0, 2: 1, 3: 2}  # track id -> channel it is painted in
NO_JITTER = dict(hue_saturation=0.0, contrast=(1.0, 1.0), brightness=0.0)


def _video(video_id: str, num_frames: int, boxes: dict[int, dict[int, tuple[int, int, int, int]]],
           cats: dict[int, int]) -> GroundTruthVideo:
    """boxes: track -> frame -> (y0, y1, x0, x1); each track painted pure red/green/blue on black."""
    frames, imaps = [], []
    for t in range(num_frames):
        img = np.zeros((H, W, 3), np.uint8)
        imap = np.zeros((H, W), np.int32)
        for tid, per_frame in boxes.items():
            if t in per_frame:
                y0, y1, x0, x1 = per_frame[t]
                imap[y0:y1, x0:x1] = tid
                img[y0:y1, x0:x1, COLOUR[tid]] = 255
        frames.append(img)
        imaps.append(imap)
    sem = [np.full((H, W), IGNORE_LABEL, np.int32) for _ in range(num_frames)]
    return GroundTruthVideo(video_id, frames, imaps, sem, cats)


GT = [
    _video("a", 6, {1: {t: (4 + 2 * t, 24 + 2 * t, 5 + 4 * t, 30 + 4 * t) for t in range(6)},
                    2: {t: (36, 46, 40, 60) for t in (3, 4, 5)}}, {1: 2, 2: 1}),
    _video("b", 5, {3: {t: (10, 40, 10 + t, 40 + t) for t in range(5)}}, {3: 3}),
]


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> DatasetRecord:
    root = tmp_path_factory.mktemp("ytvis")
    ytvis.write_ground_truth(root, "train", GT, CATEGORIES)
    return ytvis.read(root, "train")


def visible_tracks(video_index: int, frames: list[int]) -> set[int]:
    gt = GT[video_index]
    return {tid for f in frames for tid in np.unique(gt.instance_maps[f]).tolist() if tid}


def make(record: DatasetRecord, task: str = "vis", **kw) -> ClipDataset:
    sampler = kw.pop("sampler", VOSClipSampler() if task in ("vos", "pet") else InstanceClipSampler(factor=1.0))
    transform = kw.pop("transform", ClipTransform(min_dims=(48,), max_dim=128, crop_fraction=None, **NO_JITTER))
    return ClipDataset(record, sampler, transform, task=task, **kw)


def test_ytvis_track_ids_match_ground_truth(record):
    # ytvis annotation ids are assigned in video order then track order: the same numbers as GT track ids
    assert {tid: t.category_id for v in record.videos for tid, t in v.tracks.items()} == {1: 2, 2: 1, 3: 3}


def test_vis_clips_have_the_visible_tracks_aligned_with_pixels(record):
    ds = make(record, samples_per_video=4)
    assert len(ds) == 8
    index = record.category_index()
    for i in range(len(ds)):
        s = ds[i]
        vi = i // 4
        assert s.video_id == record.videos[vi].video_id and s.dataset == record.name
        assert s.frames.dtype == torch.uint8 and s.frames.shape[:2] == (3, 3)
        assert s.frames.shape[-2] % 64 == 0 and s.frames.shape[-1] % 64 == 0
        assert s.orig_size == (H, W) and len(s.frame_indices) == 3
        assert set(s.track_ids.tolist()) == visible_tracks(vi, s.frame_indices)
        assert s.track_ids.tolist() == sorted(s.track_ids.tolist())
        cats = {tid: GT[vi].track_categories[tid] for tid in s.track_ids.tolist()}
        assert s.class_ids.tolist() == [index[cats[tid]] for tid in s.track_ids.tolist()]
        assert s.iscrowd.tolist() == [False] * len(s.track_ids)
        assert s.points is None and s.semantic is None
        h, w = int(s.pad_mask.sum(0).max()), int(s.pad_mask.sum(1).max())
        for n, tid in enumerate(s.track_ids.tolist()):
            channel = s.frames[:, COLOUR[tid], :h, :w].numpy()
            for f in range(3):
                m = s.masks[n, f, :h, :w].numpy()
                gt_m = GT[vi].instance_maps[s.frame_indices[f]] == tid
                assert m.any() == gt_m.any()
                if m.any():
                    assert (channel[f][ndimage.binary_erosion(m, iterations=2)] > 180).all()
                    assert (channel[f][~ndimage.binary_dilation(m, iterations=2)] < 75).all()


def test_vos_clips_prompt_the_reference_frame_objects(record):
    ds = make(record, "vos", prompts=True, samples_per_video=3,
              transform=ClipTransform(min_dims=(48, 64), max_dim=128, scale_from="image"))
    for i in range(len(ds)):
        s = ds[i]
        vi = i // 3
        ref = s.frame_indices[0]
        assert s.frame_indices[1:] == sorted(s.frame_indices[1:]) and s.frame_indices[1] > ref
        assert s.track_ids.tolist() == sorted(visible_tracks(vi, [ref]))
        assert s.prompt_frames.tolist() == [0] * len(s.track_ids)
        assert s.class_ids.tolist() == [-1] * len(s.track_ids)
        for n in range(len(s.track_ids)):
            ref_mask = s.masks[n, 0].numpy()
            assert ref_mask.any()
            x, y = s.points[n].tolist()
            assert (x, y) == distance_peak(ref_mask)
            assert ref_mask[int(y), int(x)]


def test_pet_always_has_points(record):
    s = make(record, "pet")[0]
    assert s.points is not None and s.points.shape == (len(s.track_ids), 2)
    assert not torch.isnan(s.points).any()


def test_distance_peak_matches_brute_force():
    g = np.random.default_rng(0)
    for _ in range(20):
        mask = ndimage.binary_opening(g.random((20, 24)) < 0.6)
        if not mask.any():
            continue
        ys, xs = np.nonzero(mask)
        bg = np.argwhere(~np.pad(mask, 1)) - 1  # background pixels, the frame's outside included
        dist = np.sqrt(((np.stack([ys, xs], 1)[:, None] - bg[None]) ** 2).sum(-1)).min(1)
        best = np.flatnonzero(np.isclose(dist, dist.max()))
        cy, cx = ys.mean(), xs.mean()
        k = best[np.argmin((ys[best] - cy) ** 2 + (xs[best] - cx) ** 2)]
        assert distance_peak(mask) == (float(xs[k]), float(ys[k]))
    assert all(np.isnan(v) for v in distance_peak(np.zeros((4, 4), bool)))


def test_rectangle_peak_is_its_centre():
    mask = np.zeros((20, 30), bool)
    mask[3:12, 5:20] = True  # 9 x 15: single centre pixel (12, 7)
    assert distance_peak(mask) == (12.0, 7.0)


def test_items_are_deterministic_and_depend_on_epoch(record):
    tr = ClipTransform(min_dims=(48, 64), max_dim=128)
    a, b = make(record, transform=tr, samples_per_video=3), make(record, transform=tr, samples_per_video=3)
    for i in range(len(a)):
        sa, sb = a[i], b[i]
        assert sa.frame_indices == sb.frame_indices and torch.equal(sa.frames, sb.frames)
        assert torch.equal(sa.masks, sb.masks)
    before = [(a[i].frame_indices, a[i].frames) for i in range(len(a))]
    a.set_epoch(1)
    after = [(a[i].frame_indices, a[i].frames) for i in range(len(a))]
    assert any(x[0] != y[0] or x[1].shape != y[1].shape or not torch.equal(x[1], y[1])
               for x, y in zip(before, after))
    b2 = make(record, transform=tr, samples_per_video=3, seed=1)
    assert any(b2[i].frame_indices != b[i].frame_indices for i in range(len(b)))


def _first(batch):
    return batch[0]


def test_dataloader_workers_match_direct_indexing_and_follow_set_epoch(record):
    ds = make(record, transform=ClipTransform(min_dims=(48, 64), max_dim=128), samples_per_video=2)
    loader = DataLoader(ds, batch_size=1, num_workers=2, collate_fn=_first, persistent_workers=True)
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        got = list(loader)
        for i, s in enumerate(got):
            ref = ds[i]
            assert s.frame_indices == ref.frame_indices and torch.equal(s.frames, ref.frames)
            assert torch.equal(s.masks, ref.masks)


class CountingReader:
    def __init__(self, source: FrameSource, backend: str, log: list[list[int]]):
        self.inner, self.log = open_frames(source, backend), log

    def read(self, indices):
        self.log.append(list(indices))
        return self.inner.read(indices)


def test_only_sampled_frames_are_decoded_and_collate(record):
    log: list[list[int]] = []
    ds = make(record, reader_factory=lambda src, backend: CountingReader(src, backend, log))
    samples = [ds[0], ds[0]]
    assert log == [samples[0].frame_indices, samples[1].frame_indices]
    batch = ds.collate(samples)
    assert batch.task == "vis" and batch.frames.shape == (2, 3, 3, *samples[0].frames.shape[-2:])


class WrongSizeReader:
    def read(self, indices):
        return np.zeros((len(indices), H + 1, W, 3), np.uint8)


def test_errors(record):
    ds = make(record, reader_factory=lambda src, backend: WrongSizeReader())
    with pytest.raises(CorruptMediaError, match=f"video '{record.videos[0].video_id}'"):
        ds[0]
    with pytest.raises(AnnotationFormatError, match="no semantic map"):
        make(record, with_semantic=True)[0]
    with pytest.raises(ValueError, match="unknown task"):
        make(record, task="detection")
    with pytest.raises(IndexError):
        make(record)[2]
    bad = DatasetRecord(record.name, record.format, record.split, record.root, CATEGORIES[:2], record.videos)
    with pytest.raises(AnnotationFormatError, match="category 3 is not in"):
        make(bad)[1]


# ---------------------------------------------------------------------------------- label maps (VSS)
SEM_CATEGORIES = [Category(0, "road", False), Category(7, "sky", False), Category(20, "tree", False)]


class ArrayReader:
    def __init__(self, frames: np.ndarray):
        self.frames = frames

    def read(self, indices):
        return self.frames[list(indices)]


def _semantic_record(maps: list[np.ndarray]) -> DatasetRecord:
    def decoder(path: Path) -> FrameLabels:
        return FrameLabels(masks={}, semantic=maps[int(path.stem)])

    n = len(maps)
    names = [f"{t:05d}" for t in range(n)]
    anns = [FrameAnnotation(frame=t, label_map=Path(f"/labels/{t}.png"), decoder=decoder) for t in range(n)]
    video = VideoRecord("s0", FrameSource("images", [Path(f"/f/{x}.jpg") for x in names], names=names),
                        height=H, width=W, annotations=anns)
    return DatasetRecord("toy_vss", "vspw", "train", Path("/"), SEM_CATEGORIES, [video])


def test_semantic_maps_become_contiguous_indices():
    g = np.random.default_rng(0)
    ids = np.array([0, 7, 20, IGNORE_LABEL], np.int32)
    maps = [ids[g.integers(0, 4, (H, W))] for _ in range(5)]
    frames = g.integers(0, 256, (5, H, W, 3), dtype=np.uint8)
    ds = ClipDataset(_semantic_record(maps), SemanticClipSampler(), ClipTransform(train=False, min_dims=(96,),
                     max_dim=256), task="vss", reader_factory=lambda src, backend: ArrayReader(frames))
    s = ds[0]
    assert s.masks.shape[0] == 0 and s.semantic.dtype == torch.int64
    lut = np.full(256, -1)
    lut[[0, 7, 20, IGNORE_LABEL]] = [0, 1, 2, IGNORE_LABEL]
    expected = torch.from_numpy(lut[np.stack([maps[f] for f in s.frame_indices])])
    expected = F.interpolate(expected[:, None].float(), size=(96, 128), mode="nearest-exact")[:, 0].long()
    assert torch.equal(s.semantic[:, :96, :128], expected)
    assert (s.semantic[:, 96:] == IGNORE_LABEL).all()

    maps[2][5, 5] = 3  # not a category
    bad = ClipDataset(_semantic_record(maps), SemanticClipSampler(), ClipTransform(train=False, min_dims=(48,)),
                      task="vss", reader_factory=lambda src, backend: ArrayReader(frames))
    with pytest.raises(AnnotationFormatError, match=r"frame 2: semantic ids \[3\]"):
        for i in range(20):
            bad.set_epoch(i)
            bad[0]
