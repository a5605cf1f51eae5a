"""The calibration models of scripts/vis_reference_model.py and scripts/vos_reference_model.py: output shapes, the
mask stride, prompt pooling and the per-pixel VOS targets (the scripts' training runs are by hand, see README)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from vis_reference_model import ReferenceVISModel  # noqa: E402
from vos_reference_model import NUM_BACKGROUND, ReferenceVOSModel, clip_targets  # noqa: E402


@pytest.mark.parametrize("stride", [2, 4])
def test_vis_reference_model_shapes(stride: int) -> None:
    torch.manual_seed(0)
    net = ReferenceVISModel(num_classes=5, num_queries=16, mask_stride=stride)
    frames = torch.randint(0, 256, (2, 3, 3, 64, 128), dtype=torch.uint8)
    logits, masks = net(frames)
    assert logits.shape == (2, 16, 6)
    assert masks.shape == (2, 16, 3, 64 // stride, 128 // stride)


def test_vos_reference_model_one_query_per_prompt() -> None:
    torch.manual_seed(0)
    net = ReferenceVOSModel(mask_stride=4)
    frames = torch.randint(0, 256, (2, 3, 3, 64, 64), dtype=torch.uint8)
    prompts = torch.zeros((2, 3, 64, 64), dtype=torch.bool)
    prompts[:, 0, :20, :20] = True
    prompts[:, 1, 30:, 30:] = True  # object 2 is padding (empty prompt)
    logits = net(frames, prompts)
    assert logits.shape == (2, 1 + 3, 3, 16, 16)
    assert net.queries.weight.shape[0] == NUM_BACKGROUND  # the learned queries are the background queries
    # each object's query comes from its own prompt: moving object 0's prompt changes its masks
    moved = prompts.clone()
    moved[:, 0] = False
    moved[:, 0, 40:, :20] = True
    assert not torch.allclose(net(frames, moved)[:, 1], logits[:, 1])


def test_vos_clip_targets_label_each_pixel_by_object() -> None:
    masks = torch.zeros((2, 3, 8, 8), dtype=torch.bool)
    masks[0, :, :4, :4] = True
    masks[1, 1:, 4:, 4:] = True
    prompts, target = clip_targets(masks, (4, 4))
    assert torch.equal(prompts, masks[:, 0])
    assert target.shape == (3, 4, 4)
    assert target[:, :2, :2].eq(1).all() and target[0, 2:, 2:].eq(0).all() and target[1:, 2:, 2:].eq(2).all()
    assert target[:, :2, 2:].eq(0).all() and target[:, 2:, :2].eq(0).all()


def test_probe_batches_are_finished_as_on_the_device() -> None:
    """The probes' training batches have their crops resized and mask rectangles painted (data.resize_on_device)."""
    from _timed_batches import batches_for, probe_data

    _, dm = probe_data("vis", ["data.batch_size=2", "data.steps_per_epoch=2", "data.resize_on_device=true"])
    batch = next(batches_for(dm, 60.0))
    assert batch.device_resize is None and batch.frames.shape[-2:] == batch.pad_mask.shape[-2:]
    for s in batch.samples:
        assert s.mask_rects is None and s.masks.shape[-2:] == batch.pad_mask.shape[-2:]
