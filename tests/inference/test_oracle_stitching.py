"""Stitching through each task's `predict_video` with an oracle network whose clip outputs are slices of one
fixed video-level output (queries shuffled per clip): stitched results must equal the one-clip result for any
clip length/overlap (overlap L-1 included), and stay consistent (stable ids) when the clips disagree."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torch import nn

from vidseg.data.records import Category, FrameAnnotation, FrameSource, Prompt, VideoRecord
from vidseg.inference import vos_stream
from vidseg.inference.stream import TensorFrames, clip_starts
from vidseg.tasks.pet import PETTask
from vidseg.tasks.vis import VISTask
from vidseg.tasks.vos import VOSTask
from vidseg.tasks.vps import VPSTask
from vidseg.tasks.vss import VSSTask

T, H4 = 60, 16
HW = (H4 * 4, H4 * 4)
CLIPS = [(None, 0), (12, 6), (12, 11), (8, 1), (5, 4)]  # overlap ≥ 1: tracks can be linked


def _frames() -> TensorFrames:
    """Frame t holds the value t, so the oracle knows which frames a clip holds."""
    x = torch.arange(T, dtype=torch.uint8)[:, None, None, None].expand(T, 3, *HW).contiguous()
    return TensorFrames(x, HW, HW)


def _record() -> VideoRecord:
    names = [f"{t:05d}" for t in range(T)]
    return VideoRecord("v", FrameSource("images", names=names), HW[0], HW[1])


def _disc_logits(cx0: float, cy: float, r: float, speed: float) -> torch.Tensor:
    """[T, H4, W4] logits of a disc moving right by `speed` stride-4 pixels per frame (+4 inside, -4 out)."""
    yy, xx = torch.meshgrid(torch.arange(H4), torch.arange(H4), indexing="ij")
    out = torch.empty(T, H4, H4)
    for t in range(T):
        d = ((xx - (cx0 + speed * t)) ** 2 + (yy - cy) ** 2).float().sqrt()
        out[t] = 4.0 * (r - d).clamp(-1, 1)
    return out


class OracleModel(nn.Module):
    """encode: the clip's frame indices; decode: the video-level outputs at those frames."""

    def __init__(self, groups: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.groups = groups  # name -> [K, T, h, w]

    def encode(self, frames: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(idx=frames[0, :, 0, 0, 0].long())

    def decode(self, feats: SimpleNamespace, queries=None, adders=None) -> SimpleNamespace:
        idx = feats.idx
        outs = {k: SimpleNamespace(mask_logits=v[:, idx][None]) for k, v in self.groups.items()}
        return SimpleNamespace(group=lambda name, layer=-1: outs[name])


def _vis_oracle(task: VISTask, probs: torch.Tensor, logits: torch.Tensor, noise: float, sem=None):
    """predict_clip returning the video-level outputs at the clip frames, queries in a per-clip order."""

    def predict_clip(model, frames, dataset):
        idx = frames[:, 0, 0, 0].long()
        g = torch.Generator().manual_seed(int(idx[0]))
        perm = torch.randperm(probs.shape[0], generator=g)
        clip = logits[perm][:, idx] + noise * torch.randn(len(perm), len(idx), H4, H4, generator=g)
        out = OracleModel({"semantic": sem}).decode(SimpleNamespace(idx=idx)) if sem is not None else None
        return probs[perm], clip, out

    task.predict_clip = predict_clip  # type: ignore[method-assign]


def _instance_oracle():
    rng = torch.Generator().manual_seed(0)
    objects = torch.stack([_disc_logits(3, 4, 2.5, 0.15), _disc_logits(4, 11, 3.0, 0.1)])
    junk = torch.randn(3, T, H4, H4, generator=rng) * 3 - 2
    logits = torch.cat([objects, junk])
    probs = torch.tensor([[0.05, 0.9, 0.03, 0.02], [0.1, 0.05, 0.8, 0.05], [0.7, 0.1, 0.1, 0.1],
                          [0.6, 0.2, 0.1, 0.1], [0.9, 0.03, 0.03, 0.04]])
    return probs, logits


CATS = [Category(1, "a"), Category(2, "b"), Category(3, "c")]


@pytest.mark.parametrize(("length", "overlap"), CLIPS[1:])
def test_vis_stitched_equals_one_clip(length: int, overlap: int) -> None:
    probs, logits = _instance_oracle()
    results = []
    for clip_len, clip_overlap in [(None, 0), (length, overlap)]:
        task = VISTask(num_queries=5, top_k=10, clip_len=clip_len, clip_overlap=clip_overlap)
        task.vocabularies = {"d": CATS}
        _vis_oracle(task, probs, logits, noise=0.0)
        results.append(task.predict_video(OracleModel({}), _frames(), _record(), "d"))
    one, stitched = results
    assert len(one.tracks) == len(stitched.tracks) == 10
    for a, b in zip(one.tracks, stitched.tracks):
        assert (a.track_id, a.category_id) == (b.track_id, b.category_id)
        assert a.score == pytest.approx(b.score, abs=1e-6)
        assert a.masks == b.masks


def test_vis_track_stays_one_track_when_clips_disagree() -> None:
    """Noisy per-clip logits, queries shuffled per clip: the two moving discs remain two tracks that cover
    all 60 frames, with the right class, and their masks follow the disc."""
    probs, logits = _instance_oracle()
    task = VISTask(num_queries=5, top_k=10, clip_len=12, clip_overlap=6)
    task.vocabularies = {"d": CATS}
    _vis_oracle(task, probs, logits, noise=0.8)
    pred = task.predict_video(OracleModel({}), _frames(), _record(), "d")
    top = pred.tracks[:2]
    assert [t.category_id for t in top] == [1, 2]
    for trk, obj in zip(top, logits[:2]):
        assert all(m is not None for m in trk.masks)  # one track over every clip boundary
        for t in (0, 11, 12, 30, 59):
            got = mask_utils.decode(trk.masks[t]).astype(bool)[::4, ::4]
            want = (obj[t] > 0).numpy()
            assert (got & want).sum() / (got | want).sum() > 0.6


@pytest.mark.parametrize(("length", "overlap"), CLIPS[1:])
def test_vps_stitched_equals_one_clip(length: int, overlap: int) -> None:
    probs, logits = _instance_oracle()
    cats = [Category(1, "car", True), Category(2, "person", True), Category(3, "road", False)]
    sem = torch.randn(3, T, H4, H4, generator=torch.Generator().manual_seed(1))
    results = []
    for clip_len, clip_overlap in [(None, 0), (length, overlap)]:
        task = VPSTask(num_queries=5, clip_len=clip_len, clip_overlap=clip_overlap, score_threshold=0.5)
        task.vocabularies = {"d": cats}
        _vis_oracle(task, probs, logits, noise=0.0, sem=sem)
        results.append(task.predict_video(OracleModel({}), _frames(), _record(), "d"))
    one, stitched = results
    assert [(t.track_id, t.category_id) for t in one.tracks] == [(1, 2), (2, 1)]  # ascending score
    assert [(t.track_id, t.category_id, t.masks) for t in one.tracks] == [
        (t.track_id, t.category_id, t.masks) for t in stitched.tracks]
    assert all(np.array_equal(a, b) for a, b in zip(one.semantic_maps, stitched.semantic_maps))
    assert set(np.unique(np.stack(one.semantic_maps)).tolist()) == {3}  # things suppressed in the stuff map


@pytest.mark.parametrize(("length", "overlap"), CLIPS[1:])
def test_vss_stitched_equals_one_clip(length: int, overlap: int) -> None:
    sem = torch.randn(4, T, H4, H4, generator=torch.Generator().manual_seed(2))
    cats = [Category(i, f"c{i}", False) for i in (0, 3, 5, 9)]
    results = []
    for clip_len, clip_overlap in [(None, 0), (length, overlap)]:
        task = VSSTask(clip_len=clip_len, clip_overlap=clip_overlap)
        task.vocabularies = {"d": cats}
        task.query_set = lambda model, dataset, *a: None  # type: ignore[method-assign]
        results.append(task.predict_video(OracleModel({"semantic": sem}), _frames(), _record(), "d"))
    one, stitched = results
    assert len(one.semantic_maps) == len(stitched.semantic_maps) == T
    assert all(np.array_equal(a, b) for a, b in zip(one.semantic_maps, stitched.semantic_maps))
    assert set(np.unique(np.stack(one.semantic_maps)).tolist()) <= {0, 3, 5, 9}


def test_vss_overlap_logits_are_averaged() -> None:
    """Clip outputs that disagree on the overlap: the stitched map is the argmax of their mean."""
    sem = torch.zeros(2, T, H4, H4)
    task = VSSTask(clip_len=12, clip_overlap=6)
    task.vocabularies = {"d": [Category(0, "x", False), Category(1, "y", False)]}
    task.query_set = lambda model, dataset, *a: None  # type: ignore[method-assign]

    class Disagreeing(OracleModel):
        def decode(self, feats, queries=None, adders=None):
            idx = feats.idx
            first = int(idx[0]) // 6 % 2 == 0  # clips starting at 0, 12, ... vs 6, 18, ...
            logits = torch.zeros(2, len(idx), H4, H4)
            logits[1] = 1.0 if first else -3.0  # mean over two clips: -1 -> class 0 wins on overlaps
            return SimpleNamespace(group=lambda name, layer=-1: SimpleNamespace(mask_logits=logits[None]))

    pred = task.predict_video(Disagreeing({"semantic": sem}), _frames(), _record(), "d")
    per_frame = [int(m[0, 0]) for m in pred.semantic_maps]
    assert per_frame[:6] == [1] * 6  # only the first clip
    assert per_frame[6:12] == [0] * 6  # averaged (1 + -3) / 2 < 0
    assert per_frame[54:] == [1] * 6  # only the last clip (starts at 48: +1)


# ---------------------------------------------------------------------------------------------------- VOS
def _vos_setup(monkeypatch, hidden: tuple[int, int] | None = None):
    """Two discs; object 2 is prompted on frame 20. The oracle returns the video-level logits of the chosen
    objects (optionally object 1 hidden on frames hidden[0]..hidden[1]) and records what it was given."""
    objects = torch.stack([_disc_logits(3, 4, 2.5, 0.15), _disc_logits(4, 11, 3.0, 0.1)])
    if hidden:
        objects[0, hidden[0] : hidden[1]] = -4.0
    calls = []

    def clip_logits(task, model, clip_frames, chosen, objs, device):
        idx = clip_frames[:, 0, 0, 0].long()
        calls.append((int(idx[0]), [(k, int(f)) for k, _, f, _ in chosen]))
        return torch.stack([objects[k][idx] for k, *_ in chosen])

    monkeypatch.setattr(vos_stream, "_clip_logits", clip_logits)
    up = torch.nn.functional.interpolate(objects.flatten(0, 1)[:, None], size=HW, mode="bilinear")
    full = up.reshape(2, T, *HW) > 0
    record = _record()
    for k, f in ((1, 0), (2, 20)):
        rle = mask_utils.encode(np.asfortranarray(full[k - 1, f].numpy().astype(np.uint8)))
        record.annotations.append(FrameAnnotation(f, rles={k: rle}, track_ids=frozenset({k})))
        record.prompts.append(Prompt(k, f))
    record.annotations.sort(key=lambda a: a.frame)
    return record, calls


@pytest.mark.parametrize(("length", "overlap"), CLIPS[1:])
def test_vos_stitched_equals_one_clip(monkeypatch, length: int, overlap: int) -> None:
    record, calls = _vos_setup(monkeypatch)
    results = []
    for clip_len, clip_overlap in [(None, 0), (length, overlap)]:
        task = VOSTask(clip_len=clip_len, clip_overlap=clip_overlap)
        results.append(task.predict_video(OracleModel({}), _frames(), record, "d"))
    one, stitched = results
    assert [t.masks for t in one.tracks] == [t.masks for t in stitched.tracks]
    assert all(m is None for m in one.tracks[1].masks[:20]) and all(m is not None for m in one.tracks[1].masks[20:])
    # object 2 joins the first clip holding frame 20 with its prompt frame; re-encoded objects use a shared frame
    stitched_calls = calls[1:]
    join = next((s, objs) for s, objs in stitched_calls if any(k == 1 for k, _ in objs))
    assert dict(join[1])[1] == 20 - join[0]
    starts = clip_starts(T, length, overlap)
    shared = {b: a + length - b for a, b in zip(starts, starts[1:])}  # frames shared with the previous clip
    for s, objs in stitched_calls[1:]:
        for k, f in objs:
            assert f < shared[s] or (k == 1 and s + f == 20)


@pytest.mark.parametrize("revive", [False, True])
def test_vos_lost_object_is_revived_only_by_the_switch(monkeypatch, revive: bool) -> None:
    record, _ = _vos_setup(monkeypatch, hidden=(22, 40))  # invisible on the whole overlap 30..35
    task = VOSTask(clip_len=12, clip_overlap=6, revive_lost=revive)
    pred = task.predict_video(OracleModel({}), _frames(), record, "d")
    obj1 = pred.tracks[0].masks
    assert all(m is not None for m in obj1[:22]) and all(m is None for m in obj1[22:40])
    back = [m is not None for m in obj1[42:]]
    assert all(back) if revive else not any(back)
    assert all(m is not None for m in pred.tracks[1].masks[20:])  # the other object is unaffected


class _BackgroundOracle(OracleModel):
    """A VOS network whose one object query says 'object' (logit +1) on the whole frame and whose background
    query says 'background' with +4 on the left half of the frame and -2 on the right half (margins -3 / +3)."""

    def encode(self, frames: torch.Tensor) -> SimpleNamespace:
        idx = frames[0, :, 0, 0, 0].long()
        return SimpleNamespace(idx=idx, mask_features=torch.zeros(1, len(idx), 1, H4, H4))


@pytest.mark.parametrize("with_background", [True, False])
def test_vos_labels_use_the_background_queries_only_when_asked(monkeypatch, with_background: bool) -> None:
    half = torch.full((1, T, H4, H4), -2.0)
    half[..., : H4 // 2] = 4.0
    model = _BackgroundOracle({"background_vos": half, "vos": torch.ones(1, T, H4, H4)})
    task = VOSTask(label_with_background=with_background)
    monkeypatch.setattr(task, "build_queries", lambda *a, **k: SimpleNamespace(owners=[0]))
    record = _record()
    prompt = np.zeros(HW, dtype=np.uint8)
    prompt[8:24, 8:24] = 1
    record.annotations.append(FrameAnnotation(0, rles={1: mask_utils.encode(np.asfortranarray(prompt))},
                                              track_ids=frozenset({1})))
    record.prompts.append(Prompt(1, 0))
    masks = task.predict_video(model, _frames(), record, "d").tracks[0].masks
    expected = np.ones(HW, dtype=bool)
    if with_background:  # argmax over (background, object): the object only where it beats the background
        expected[:, : HW[1] // 2] = False
    assert np.array_equal(mask_utils.decode(masks[0]).astype(bool), prompt.astype(bool))  # the prompt frame: GT
    for t in (1, T // 2, T - 1):
        assert np.array_equal(mask_utils.decode(masks[t]).astype(bool), expected), t


class _MirrorProbe(nn.Module):
    """object logit = 4·prompt + 4·bright − 6 (the object where the prompt meets bright pixels; `biased`: +4 on
    the left half of the input and −4 on the right, whatever the input); background logit 0. Records whether
    each pass saw the bright stripe mirrored."""

    def __init__(self, biased: bool = False) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.biased, self.mirrored = biased, []

    def encode(self, frames: torch.Tensor) -> SimpleNamespace:
        bright = frames[0, :, 0].float() > 128  # [t, H, W]
        self.mirrored.append(bool(bright[0, :, -1].any()))
        grid = torch.nn.functional.avg_pool2d(bright.float()[:, None], 4)[:, 0] > 0.5
        return SimpleNamespace(mask_features=torch.zeros(1, len(bright), 1, H4, H4), bright=grid)

    def decode(self, feats: SimpleNamespace, queries: SimpleNamespace, adders=None) -> SimpleNamespace:
        t = feats.bright.shape[0]
        if self.biased:
            obj = torch.full((t, H4, H4), -4.0)
            obj[..., : H4 // 2] = 4.0
        else:
            obj = 4.0 * queries.prompt.float()[None] + 4.0 * feats.bright.float() - 6.0
        outs = {"vos": SimpleNamespace(mask_logits=obj[None, None]),
                "background_vos": SimpleNamespace(mask_logits=torch.zeros(1, 1, t, H4, H4))}
        return SimpleNamespace(group=lambda name, layer=-1: outs[name])


def _mirror_case(monkeypatch, model: _MirrorProbe, flip_tta: bool) -> list:
    frames = torch.zeros(T, 3, *HW, dtype=torch.uint8)
    frames[..., :16] = 255  # a bright stripe on the left
    task = VOSTask(flip_tta=flip_tta)
    monkeypatch.setattr(task, "build_queries", lambda feats, masks, *a: SimpleNamespace(owners=[0], prompt=masks[0][0]))
    record = _record()
    prompt = np.zeros(HW, dtype=np.uint8)
    prompt[:, 8:40] = 1
    record.annotations.append(FrameAnnotation(0, rles={1: mask_utils.encode(np.asfortranarray(prompt))},
                                              track_ids=frozenset({1})))
    record.prompts.append(Prompt(1, 0))
    pred = task.predict_video(model, TensorFrames(frames, HW, HW), record, "d")
    return pred.tracks[0].masks


@pytest.mark.parametrize("flip_tta", [False, True])
def test_vos_flip_tta_mirrors_frames_prompts_and_logits_back(monkeypatch, flip_tta: bool) -> None:
    model = _MirrorProbe()
    masks = _mirror_case(monkeypatch, model, flip_tta)
    expected = np.zeros(HW, dtype=bool)
    expected[:, 8:16] = True  # prompt ∩ bright, in the original frame's coordinates
    for t in (1, T - 1):
        assert np.array_equal(mask_utils.decode(masks[t]).astype(bool), expected), t
    assert model.mirrored == ([False, True] if flip_tta else [False])  # one clip: one pass, or one plus its mirror


def test_vos_flip_tta_averages_the_two_passes(monkeypatch) -> None:
    """A network biased to the input's left half: alone it predicts the left half; averaged with its mirrored
    pass the bias cancels (logit 0 everywhere, so no pixel is labelled)."""
    plain = _mirror_case(monkeypatch, _MirrorProbe(biased=True), flip_tta=False)
    left = np.zeros(HW, dtype=bool)
    left[:, : HW[1] // 2] = True
    assert np.array_equal(mask_utils.decode(plain[1]).astype(bool), left)
    averaged = _mirror_case(monkeypatch, _MirrorProbe(biased=True), flip_tta=True)
    assert all(m is None for m in averaged[1:])


class _PointProbe(_MirrorProbe):
    """object logit +4 within 2 cells of the query's point (in the input's coordinates), −4 elsewhere."""

    def decode(self, feats: SimpleNamespace, queries: SimpleNamespace, adders=None) -> SimpleNamespace:
        t = feats.bright.shape[0]
        yy, xx = torch.meshgrid(torch.arange(H4), torch.arange(H4), indexing="ij")
        px, py = float(queries.point[0]) * H4, float(queries.point[1]) * H4
        disc = ((xx + 0.5 - px) ** 2 + (yy + 0.5 - py) ** 2) <= 4.0
        obj = torch.where(disc, 4.0, -4.0)[None].expand(t, H4, H4)
        outs = {"vos": SimpleNamespace(mask_logits=obj[None, None]),
                "background_vos": SimpleNamespace(mask_logits=torch.zeros(1, 1, t, H4, H4))}
        return SimpleNamespace(group=lambda name, layer=-1: outs[name])


@pytest.mark.parametrize("flip_tta", [False, True])
def test_pet_flip_tta_mirrors_the_point(monkeypatch, flip_tta: bool) -> None:
    """A point prompt left of the centre: the mirrored pass must get the mirrored point, so both passes put the
    object at the same place (a wrong point would average it away)."""
    task = PETTask(flip_tta=flip_tta)
    monkeypatch.setattr(task, "build_queries", lambda feats, masks, frames, points, *a: SimpleNamespace(
        owners=[0], point=points[0][0]))
    record = _record()
    prompt = np.zeros(HW, dtype=np.uint8)
    prompt[20:29, 8:17] = 1  # distance-transform peak (12, 24): cell (3, 6) of the 16x16 grid
    record.annotations.append(FrameAnnotation(0, rles={1: mask_utils.encode(np.asfortranarray(prompt))},
                                              track_ids=frozenset({1})))
    record.prompts.append(Prompt(1, 0))
    frames = torch.zeros(T, 3, *HW, dtype=torch.uint8)
    masks = task.predict_video(_PointProbe(), TensorFrames(frames, HW, HW), record, "d").tracks[0].masks
    found = mask_utils.decode(masks[1]).astype(bool)
    ys, xs = np.nonzero(found)
    assert found.sum() > 0 and xs.max() < HW[1] // 2  # the disc around the point, on the left
    assert abs(xs.mean() - 12.5) < 2 and abs(ys.mean() - 24.5) < 2
