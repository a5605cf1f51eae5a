"""Colour jitter on the device: the transform draws it, samples/batches carry it, the model applies it while
normalising, and the result equals the CPU jitter of the same draw up to uint8 rounding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vidseg.data.clip_dataset import ClipDataset, rle_boxes
from vidseg.data.collate import collate_clips
from vidseg.data.formats import get_format
from vidseg.data.records import PAD_VALUE, Batch, ClipSample, FrameAnnotation
from vidseg.data.sampling import InstanceClipSampler
from vidseg.data.synthetic import ensure_synthetic
from vidseg.data.transforms import ClipTransform, colour_matrix, mask_boxes
from vidseg.model.backbone import normalize_frames

RAW = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # normalize_frames mean/std that keep the 0-255 scale
CONF = Path(__file__).resolve().parents[2] / "conf"


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def noise_frames(t: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = np.random.default_rng(seed)
    return torch.from_numpy(g.integers(0, 256, (t, h, w, 3), dtype=np.uint8)).permute(0, 3, 1, 2)


def device_pixels(out, t: int) -> torch.Tensor:
    """The frames as the model sees them (0-255 float) after applying the clip's colour on valid pixels."""
    return normalize_frames(out.frames, *RAW, colour=out.colour.expand(t, 3, 4),
                            valid=out.pad_mask.expand(t, *out.pad_mask.shape))


def both(frames: torch.Tensor, masks: torch.Tensor, seed: int, **kw):
    cpu = ClipTransform(colour_on_device=False, **kw)(frames, masks, rng=rng(seed))
    dev = ClipTransform(**kw)(frames, masks, rng=rng(seed))
    assert (cpu.crop, cpu.flipped, cpu.size) == (dev.crop, dev.flipped, dev.size)  # one draw, same geometry
    assert cpu.colour is None and dev.colour is not None and dev.colour.shape == (3, 4)
    return cpu, dev


def test_device_jitter_equals_cpu_jitter_without_resize():
    frames = noise_frames(3, 64, 96)  # full 0..255 range: clipping at both ends is exercised
    masks = torch.ones((1, 3, 64, 96), dtype=torch.bool)
    for seed in range(12):
        # crop 48x72 with short side 48: no resize, so only PIL's final rounding separates the two
        cpu, dev = both(frames, masks, seed, min_dims=(48,), max_dim=400, crop_fraction=(0.75, 0.75))
        assert not torch.equal(cpu.frames, dev.frames)  # the CPU path did jitter, the device path did not
        got = device_pixels(dev, 3)
        assert (got - cpu.frames.float()).abs().max() <= 0.5 + 1e-3
        assert (got[:, :, 48:] == PAD_VALUE).all() and (got[:, :, :, 72:] == PAD_VALUE).all()  # padding kept


@pytest.mark.parametrize("short", [80, 40])  # up- and downscaled crops
def test_device_jitter_after_resize_matches_cpu_jitter_before_it(short: int):
    """Bilinear resizing is linear with unit-sum weights, so the affine jitter commutes with it; what remains
    is uint8 rounding (colour, resize) and, here excluded by the pixel range, clipping at 0/255."""
    frames = torch.from_numpy(np.random.default_rng(1).integers(45, 211, (3, 64, 96, 3), dtype=np.uint8))
    frames = frames.permute(0, 3, 1, 2)
    masks = torch.ones((1, 3, 64, 96), dtype=torch.bool)
    for seed in range(12):
        cpu, dev = both(frames, masks, seed, min_dims=(short,), max_dim=400, crop_fraction=(0.75, 0.75))
        diff = (device_pixels(dev, 3) - cpu.frames.float()).abs()
        assert diff.max() <= 2.5 and diff.mean() <= 0.35


def test_device_colour_is_the_drawn_colour_matrix():
    frames = noise_frames(2, 24, 32)
    masks = torch.ones((1, 2, 24, 32), dtype=torch.bool)
    out = ClipTransform(min_dims=(24,), max_dim=100, crop_fraction=None, flip_p=0.0)(frames, masks, rng=rng(3))
    g = rng(3)  # redraw in the documented order: flip, short side, hue, saturation, contrast, brightness
    g.random(), g.integers(1)
    m, b = colour_matrix(g.uniform(-12, 12) / 255 * 360, 1 + g.uniform(-12, 12) / 128, g.uniform(0.95, 1.05),
                         g.uniform(-25, 25))
    np.testing.assert_allclose(out.colour.numpy(), np.concatenate([m, b[:, None]], 1), rtol=0, atol=1e-6)
    assert torch.equal(out.frames[..., :24, :32], frames)  # no resize, no crop: pixels untouched on the CPU
    ident = ClipTransform(train=False, min_dims=(24,), max_dim=100)(frames, masks, rng=rng(3))
    assert ident.colour is None  # evaluation: no jitter


def test_normalize_frames_colour_identity_valid_and_errors():
    frames = noise_frames(2, 16, 16)
    plain = normalize_frames(frames)
    identity = torch.eye(3, 4).expand(2, 3, 4)
    assert torch.equal(normalize_frames(frames, colour=identity), plain)
    colour = torch.tensor([[0.0, 1.0, 0.0, 5.0], [1.0, 0.0, 0.0, -300.0], [0.5, 0.5, 0.5, 0.0]]).expand(2, 3, 4)
    valid = torch.zeros(2, 16, 16, dtype=torch.bool)
    valid[:, :8] = True
    got = normalize_frames(frames, *RAW, colour=colour, valid=valid)
    f = frames.float()
    ref = torch.stack([f[:, 1] + 5, f[:, 0] - 300, f.sum(1) * 0.5], 1).clamp(0, 255)
    assert (ref == 0).any() and (ref == 255).any()  # both clamps exercised
    torch.testing.assert_close(got[..., :8, :], ref[..., :8, :], rtol=0, atol=1e-4)
    assert torch.equal(got[..., 8:, :], f[..., 8:, :])  # invalid (padding) pixels untouched
    with pytest.raises(ValueError, match="colour must be"):
        normalize_frames(frames, colour=torch.eye(3, 4))
    with pytest.raises(ValueError, match="valid must be"):
        normalize_frames(frames, colour=identity, valid=valid[0])


def test_tarvis_encode_applies_the_clip_colour_to_every_frame():
    from vidseg.model.tarvis import TarViS

    torch.manual_seed(0)
    cfg = OmegaConf.load(CONF / "model" / "tarvis_tiny.yaml")
    model: TarViS = instantiate(cfg, vocabularies={"ytvis": 2}, groups=["instance"])
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 2, 3, 64, 64), dtype=np.uint8))
    colour = torch.stack([torch.eye(3, 4), torch.tensor([[1.05, 0, 0, 10.0], [0, 0.9, 0, -20], [0, 0, 1, 3]])])
    valid = torch.ones(2, 64, 64, dtype=torch.bool)
    valid[1, 40:] = False
    mapped = frames.float().clone()
    m, b = colour[1, :, :3], colour[1, :, 3]
    jittered = (torch.einsum("ij,tjhw->tihw", m, mapped[1]) + b[:, None, None]).clamp(0, 255)
    mapped[1, :, :, :40] = jittered[:, :, :40]
    with torch.no_grad():
        got = model.encode(frames, colour=colour, valid=valid).mask_features
        ref = model.encode(mapped).mask_features
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="colour must be"):
        model.encode(frames, colour=colour[:1])


def _sample(colour: torch.Tensor | None, h: int = 64) -> ClipSample:
    return ClipSample(frames=torch.zeros(2, 3, h, 64, dtype=torch.uint8), masks=torch.zeros(0, 2, h, 64, dtype=bool),
                      track_ids=torch.zeros(0, dtype=torch.int64), class_ids=torch.zeros(0, dtype=torch.int64),
                      pad_mask=torch.ones(h, 64, dtype=torch.bool), dataset="d", colour=colour)


def test_collate_stacks_colour_identity_for_missing_and_to_keeps_it():
    c = torch.arange(12, dtype=torch.float32).view(3, 4)
    batch = collate_clips([_sample(c), _sample(None, h=128)], "vis")
    assert batch.colour.shape == (2, 3, 4)
    assert torch.equal(batch.colour[0], c) and torch.equal(batch.colour[1], torch.eye(3, 4))
    assert batch.samples[0].colour is c and batch.frames.shape[-2] == 128
    moved = batch.to("cpu")
    assert torch.equal(moved.colour, batch.colour) and torch.equal(moved.samples[0].colour, c)
    assert collate_clips([_sample(None), _sample(None)], "vis").colour is None


def test_module_passes_batch_colour_to_encode():
    from torch import nn

    from vidseg.module import VidsegModule
    from vidseg.tasks.base import Task

    seen: dict = {}

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def encode(self, frames, colour=None, valid=None):
            seen.update(colour=colour, valid=valid)
            return frames.float().mean() * self.w

        def decode(self, feats, query_set, query_adders=None):
            return feats

    class Rec(Task):
        name = "vis"

        def init_queries(self, model, feats, batch):
            return object()

        def loss(self, model, feats, queries, out, batch):
            return {"a": out}

        def predict_video(self, *a):
            raise NotImplementedError

        def make_metric(self, *a):
            raise NotImplementedError

    module = VidsegModule(Model(), {"vis": Rec()}, {"lr": 1e-3, "weight_decay": 0.0})
    c = torch.eye(3, 4) * 2
    batch = collate_clips([_sample(c)], "vis")
    module.forward_task(batch)
    assert seen["colour"] is batch.colour and seen["valid"] is batch.pad_mask
    seen.clear()
    module.forward_task(collate_clips([_sample(None)], "vis"))
    assert seen == {"colour": None, "valid": None}


def test_train_batches_carry_the_drawn_jitter_eval_none(tmp_path):
    root = ensure_synthetic("ytvis", tmp_path, height=64, width=96, videos_train=2, videos_val=1, frames=8)
    record = get_format("ytvis").read(root, "train")
    kw = dict(task="vis", samples_per_video=2, seed=4)
    train = ClipDataset(record, InstanceClipSampler(num_frames=3, factor=2.0),
                        ClipTransform(min_dims=(48,), max_dim=128), **kw)
    cpu = ClipDataset(record, InstanceClipSampler(num_frames=3, factor=2.0),
                      ClipTransform(min_dims=(48,), max_dim=128, colour_on_device=False), **kw)
    batch: Batch = train.collate([train[0], train[1]])
    assert batch.colour.shape == (2, 3, 4) and not torch.equal(batch.colour[0], batch.colour[1])
    for k, s in enumerate(batch.samples):
        ref = cpu[k]
        assert torch.equal(s.masks, ref.masks) and torch.equal(s.track_ids, ref.track_ids)
        t = s.frames.shape[0]
        got = normalize_frames(s.frames, *RAW, colour=s.colour.expand(t, 3, 4),
                               valid=s.pad_mask.expand(t, *s.pad_mask.shape))
        diff = (got - ref.frames.float()).abs()
        assert diff.mean() <= 0.5  # same draw; clipping at 0/255 before vs after the resize may differ locally
        assert not torch.equal(s.colour, torch.eye(3, 4))
    evaluation = ClipDataset(record, InstanceClipSampler(num_frames=3, factor=2.0),
                             ClipTransform(train=False, min_dims=(48,), max_dim=128), **kw)
    assert evaluation[0].colour is None and evaluation.collate([evaluation[0]]).colour is None


def test_rle_boxes_equal_boxes_of_the_decoded_masks():
    from pycocotools import mask as mask_utils

    g = np.random.default_rng(0)
    h, w = 30, 41
    anns = []
    for f in range(3):
        rles = {}
        for tid in (1, 2, 5):
            m = np.zeros((h, w), dtype=np.uint8)
            if g.random() < 0.8:
                y, x = g.integers(0, h - 5), g.integers(0, w - 5)
                m[y : y + g.integers(1, 12), x : x + g.integers(1, 15)] = 1
                m[g.random((h, w)) < 0.02] = 1
            rles[tid] = None if tid == 5 and f == 1 else mask_utils.encode(np.asfortranarray(m))
        anns.append(FrameAnnotation(frame=f, rles=rles))
    anns.append(None)  # unannotated clip frame
    ids = [1, 2, 5, 7]  # 7: in no frame
    masks = np.zeros((len(ids), 4, h, w), dtype=bool)
    for t, ann in enumerate(anns):
        for n, tid in enumerate(ids):
            rle = None if ann is None else ann.rles.get(tid)
            if rle is not None:
                masks[n, t] = mask_utils.decode(rle).astype(bool)
    np.testing.assert_array_equal(rle_boxes(anns, ids), mask_boxes(masks))
    assert rle_boxes([FrameAnnotation(frame=0, label_map=Path("00000.png"))], [1]) is None  # label maps: decode
