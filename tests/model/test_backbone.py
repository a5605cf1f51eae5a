"""Backbone: shapes/channels from timm, Swin NHWC->NCHW at any size, frozen BN, local weights, normalisation."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from torchvision.ops.misc import FrozenBatchNorm2d

from vidseg.data.records import MissingFileError
from vidseg.model.backbone import Backbone, normalize_frames, pad_to_multiple


def _check_maps(backbone: Backbone, maps: list[torch.Tensor], n: int, h: int, w: int) -> None:
    assert backbone.strides == [4, 8, 16, 32]
    assert len(maps) == 4
    for fmap, ch, stride in zip(maps, backbone.channels, backbone.strides):
        assert fmap.shape == (n, ch, h // stride, w // stride)
        assert fmap.is_contiguous() or fmap.is_contiguous(memory_format=torch.channels_last)  # dense
        assert torch.isfinite(fmap).all()


@pytest.mark.parametrize(
    ("name", "size", "channels"),
    [
        ("tiny", (96, 96), None),
        ("resnet50", (64, 64), [256, 512, 1024, 2048]),
        ("convnext_tiny", (64, 128), [96, 192, 384, 768]),
        ("swin_t", (128, 128), [96, 192, 384, 768]),
        ("swin_tiny_patch4_window7_224", (64, 192), [96, 192, 384, 768]),  # non-224, non-square
    ],
)
def test_backbone_output_shapes_and_channels(name, size, channels):
    torch.manual_seed(0)
    backbone = Backbone(name).eval()
    h, w = size
    with torch.no_grad():
        maps = backbone(torch.randn(2, 3, h, w))
    _check_maps(backbone, maps, 2, h, w)
    # channels come from timm's feature_info of the same model
    assert backbone.channels == backbone.body.feature_info.channels()
    if channels is not None:
        assert backbone.channels == channels


def test_tiny_backbone_is_small_and_exact_against_timm():
    backbone = Backbone("tiny").eval()
    assert sum(p.numel() for p in backbone.parameters()) < 1_000_000
    reference = timm.create_model("test_resnet", features_only=True, out_indices=(1, 2, 3, 4)).eval()
    reference.load_state_dict(backbone.body.state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for got, want in zip(backbone(x), reference(x)):
            torch.testing.assert_close(got, want)


def test_swin_output_is_nchw_permutation_of_timm_nhwc():
    backbone = Backbone("swin_t").eval()
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        ours = backbone(x)
        raw = backbone.body(x)
    assert backbone.channels_last_output
    for got, nhwc in zip(ours, raw):
        torch.testing.assert_close(got, nhwc.permute(0, 3, 1, 2))


def test_frozen_bn_has_no_trainable_bn_params_and_ignores_train_mode():
    backbone = Backbone("tiny", frozen_bn=True)
    modules = list(backbone.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in modules)
    frozen = [m for m in modules if isinstance(m, FrozenBatchNorm2d)]
    assert frozen
    assert all(len(list(m.parameters())) == 0 for m in frozen)
    x = torch.randn(2, 3, 64, 64)
    backbone.train()
    train_out = backbone(x)
    backbone.eval()
    with torch.no_grad():
        eval_out = backbone(x)
    for a, b in zip(train_out, eval_out):
        torch.testing.assert_close(a.detach(), b)


def test_drop_path_rate_reaches_timm():
    backbone = Backbone("swin_t", drop_path_rate=0.3)
    rates = [m.drop_prob for m in backbone.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.3)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_pretrained_file_loads_local_weights(tmp_path, suffix):
    torch.manual_seed(123)
    source = timm.create_model("test_resnet", pretrained=False)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    torch.manual_seed(999)  # a different init, so equality can only come from the file
    backbone = Backbone("tiny", pretrained_file=str(path))
    loaded = backbone.body.state_dict()
    checked = 0
    for key, value in loaded.items():
        if key in state:
            torch.testing.assert_close(value, state[key], rtol=0, atol=0)
            checked += 1
    assert checked == len(loaded)


def test_pretrained_file_missing_raises_clear_error(tmp_path):
    with pytest.raises(MissingFileError, match="nope.safetensors"):
        Backbone("tiny", pretrained_file=str(tmp_path / "nope.safetensors"))


def test_backbone_rejects_bad_inputs():
    backbone = Backbone("tiny")
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        backbone(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match="normalize_frames"):
        backbone(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="no stride-4"):
        Backbone("test_vit")  # plain ViT: every feature map has stride 16


def test_stride2_output_is_timms_stride2_map_and_bad_strides_are_rejected():
    torch.manual_seed(0)
    backbone = Backbone("tiny", strides=(2, 4, 8, 16, 32)).eval()
    assert backbone.strides == [2, 4, 8, 16, 32] and len(backbone.channels) == 5
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        maps = backbone(x)
        plain = Backbone("tiny").eval()
        plain.load_state_dict(backbone.state_dict())
        reference = plain(x)
    assert tuple(maps[0].shape) == (1, backbone.channels[0], 32, 32)
    assert all(torch.equal(a, b) for a, b in zip(maps[1:], reference))  # the same four maps as without it
    with pytest.raises(ValueError, match="strides must be one of"):
        Backbone("tiny", strides=(8, 16, 32))


def test_normalize_frames_values_and_device_dtype():
    frames = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    mean, std = (10.0, 20.0, 30.0), (2.0, 4.0, 5.0)
    out = normalize_frames(frames, mean, std)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 2)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([(0 - 10) / 2, (128 - 20) / 4, (255 - 30) / 5]))
    with pytest.raises(ValueError, match=r"\[\.\.\., 3, H, W\]"):
        normalize_frames(torch.zeros(2, 4, 4, dtype=torch.uint8))


def test_pad_to_multiple_pads_bottom_right_with_value():
    frames = torch.zeros(2, 3, 3, 70, 100, dtype=torch.uint8)
    padded = pad_to_multiple(frames, 64, 128)
    assert padded.shape == (2, 3, 3, 128, 128) and padded.dtype == torch.uint8
    assert (padded[..., :70, :100] == 0).all()
    assert (padded[..., 70:, :] == 128).all() and (padded[..., :, 100:] == 128).all()
    same = torch.zeros(1, 3, 64, 128)
    assert pad_to_multiple(same, 64) is same
