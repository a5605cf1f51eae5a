"""A minimal prototype VOS model on the default VOS training batches (by hand: the calibration behind README
"Learning"; not part of vidseg's model).

4-stage CNN on the TarViS-normalised, colour-jittered frames (or, with --tarvis-features, the tiny TarViS
backbone + neck), FPN to stride 4, one query per object = MLP(masked average of the reference frame's features,
with gradient), one background query from the rest of the frame, logits = query · feature / 8, BCE + dice at full
resolution. Prints the per-object IoU (argmax over [background, objects]; reference frame and later frames) on the
training clips it trains on, every 100 steps.

    python scripts/vos_prototype_baseline.py --seconds 240
    python scripts/vos_prototype_baseline.py --seconds 240 --tarvis-features
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import Tensor, nn

from _timed_batches import batches_for
from vidseg.model.backbone import normalize_frames
from vidseg.utils.run import build_datamodule

CONF = Path(__file__).resolve().parents[1] / "conf"


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU())


class PrototypeVOS(nn.Module):
    """Masked-average-pooling prototypes against stride-4 features."""

    def __init__(self, d: int = 64, tarvis: nn.Module | None = None) -> None:
        super().__init__()
        self.tarvis = tarvis
        self.stages = nn.ModuleList([_stage(3, 32), _stage(32, 64), _stage(64, 96), _stage(96, 128)])
        self.lateral = nn.ModuleList([nn.Conv2d(c, d, 1) for c in (64, 96, 128)])
        self.out = nn.Conv2d(d, d, 3, 1, 1)
        self.query = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
        self.background = nn.Parameter(torch.zeros(d))

    def features(self, frames: Tensor, colour: Tensor | None, valid: Tensor | None) -> Tensor:
        """uint8 [B, T, 3, H, W] (+ the batch's colour jitter) -> stride-4 features [B, T, d, H/4, W/4]."""
        if self.tarvis is not None:
            return self.tarvis.encode(frames, colour=colour, valid=valid).mask_features
        b, t = frames.shape[:2]
        per_frame = None if colour is None else colour[:, None].expand(b, t, 3, 4).flatten(0, 1)
        per_valid = None if valid is None else valid[:, None].expand(b, t, *valid.shape[1:]).flatten(0, 1)
        x = normalize_frames(frames.flatten(0, 1), colour=per_frame, valid=per_valid)
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        y = self.lateral[2](maps[3])
        y = F.interpolate(y, scale_factor=2) + self.lateral[1](maps[2])
        y = F.interpolate(y, scale_factor=2) + self.lateral[0](maps[1])
        return self.out(y).unflatten(0, (b, t))

    def forward(self, frames: Tensor, ref_masks: Tensor, colour: Tensor | None = None,
                valid: Tensor | None = None) -> Tensor:
        """frames [B, T, 3, H, W]; ref_masks [B, N, H, W] on frame 0 -> logits [B, 1+N, T, H/4, W/4]."""
        f = self.features(frames, colour, valid)
        m = F.interpolate(ref_masks.float(), size=f.shape[-2:], mode="area")
        pooled = torch.einsum("bnhw,bdhw->bnd", m, f[:, 0]) / m.sum((2, 3))[..., None].clamp(min=1e-3)
        bg = 1 - m.amax(1, keepdim=True).clamp(max=1)
        bg_pooled = torch.einsum("bnhw,bdhw->bnd", bg, f[:, 0]) / bg.sum((2, 3))[..., None].clamp(min=1e-3)
        q = self.query(torch.cat([bg_pooled + self.background, pooled], 1))
        return torch.einsum("bnd,btdhw->bnthw", q, f) / 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=240)
    parser.add_argument("--tarvis-features", action="store_true")
    parser.add_argument("-x", "--extra", action="append", default=[], metavar="OVERRIDE")
    args = parser.parse_args()
    torch.manual_seed(0)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["task=vos", "run_name=x", "paths.output_dir=/tmp", *args.extra])
    dm = build_datamodule(cfg, ["vos"])
    dm.prepare_data()
    model = PrototypeVOS(tarvis=instantiate(cfg.model) if args.tarvis_features else None)
    opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=0.05)
    start, iou_ref, iou_later = time.time(), [], []
    for step, batch in enumerate(batches_for(dm, args.seconds), start=1):
        n = min(s.masks.shape[0] for s in batch.samples)
        masks = torch.stack([s.masks[:n] for s in batch.samples]).float()  # [B, N, T, H, W]
        logits = model(batch.frames, masks[:, :, 0], batch.colour, batch.pad_mask)
        logits = F.interpolate(logits.flatten(1, 2), size=masks.shape[-2:], mode="bilinear").unflatten(1, (n + 1, -1))
        target = torch.cat([1 - masks.amax(1, keepdim=True), masks], 1)
        probs = logits.sigmoid()
        dice = 1 - (2 * (probs * target).sum((-1, -2)) + 1) / (probs.sum((-1, -2)) + target.sum((-1, -2)) + 1)
        loss = F.binary_cross_entropy_with_logits(logits, target) + dice.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            labels = logits.argmax(1)  # [B, T, H, W]
            for k in range(n):
                gt, pred = masks[:, k] > 0, labels == k + 1
                inter, union = (gt & pred).flatten(2).sum(-1), (gt | pred).flatten(2).sum(-1)
                seen = gt.flatten(2).any(-1)
                iou = inter / union.clamp(min=1)
                iou_ref += iou[:, 0][seen[:, 0]].tolist()
                iou_later += iou[:, 1:][seen[:, 1:]].tolist()
        if step % 100 == 0:
            print(f"step {step} ({time.time() - start:.0f} s): loss {loss.item():.3f}, train IoU reference frame "
                  f"{np.mean(iou_ref[-200:]):.3f}, later frames {np.mean(iou_later[-400:]):.3f}", flush=True)


if __name__ == "__main__":
    main()
