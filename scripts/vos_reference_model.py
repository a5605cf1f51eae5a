"""A minimal query model for VOS, to calibrate the synthetic data against the VOS bar of issue #5.

The issue's scale for its VOS bar: "a 60-line query model with a 4-stage CNN reached VOS J 0.67 ... at 64 px in 4
minutes". This is such a model, trained on the batches of `python -m vidseg.train task=vos` (one thread) and
scored with `DavisJF` on the same val videos at the same scale (the whole video as one clip, prompts from the
first-frame masks), like `scripts/vis_reference_model.py` for VIS.

Model: the CNN and FPN pixel embeddings of `vis_reference_model.ReferenceVISModel`; one query per object, the pixel
embeddings average-pooled under its prompt mask, plus 4 learned background queries; 3 `nn.TransformerDecoder`
layers over the clip's stride-16 features; mask logits = MLP(query) · pixel embeddings. Each pixel is classified
over [background (max of the background queries), objects] with softmax cross-entropy; AdamW lr 1e-3, clip 1.0.

    python scripts/vos_reference_model.py --seconds 240
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor

from _timed_batches import batches_for, probe_data, reference_args, report
from vidseg.data.records import TrackPrediction, VideoPrediction
from vidseg.inference.resize import logits_to_original, masks_to_rles
from vidseg.metrics.jf import DavisJF
from vis_reference_model import ReferenceVISModel

NUM_BACKGROUND = 4


class ReferenceVOSModel(ReferenceVISModel):
    """uint8 clips [B, T, 3, H, W] + prompt masks [B, N, H, W] (on clip frame 0) -> [B, 1+N, T, h, w] logits."""

    def __init__(self, d: int = 64, mask_stride: int = 4) -> None:
        super().__init__(num_classes=1, num_queries=NUM_BACKGROUND, d=d, mask_stride=mask_stride)

    def forward(self, frames: Tensor, prompts: Tensor) -> Tensor:  # type: ignore[override]
        pixels, memory = self.encode(frames)
        b, n = prompts.shape[:2]
        weights = F.interpolate(prompts.float(), size=pixels.shape[-2:], mode="area")  # [B, N, h, w]
        pooled = torch.einsum("bnhw,bdhw->bnd", weights, pixels[:, 0])
        pooled = pooled / weights.sum((2, 3)).clamp(min=1e-6).unsqueeze(-1)
        q = torch.cat([self.queries.weight.expand(b, -1, -1), pooled], 1)
        q = self.decoder(q, memory)
        logits = torch.einsum("bqd,btdhw->bqthw", self.mask_embed(q), pixels)
        return torch.cat([logits[:, :NUM_BACKGROUND].amax(1, keepdim=True), logits[:, NUM_BACKGROUND:]], 1)


def clip_targets(masks: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Prompt masks [N, H, W] (frame 0) and the per-pixel target [T, h, w] (0 = background, k + 1 = object k)."""
    small = F.interpolate(masks.float(), size=size, mode="nearest") > 0.5  # [N, T, h, w]
    target = torch.zeros(small.shape[1:], dtype=torch.long)
    for k in range(small.shape[0]):
        target[small[k]] = k + 1
    return masks[:, 0], target


def main() -> None:
    args = reference_args(__doc__, "write {steps, J-Mean, F-Mean, J&F-Mean} here")
    _, dm = probe_data("vos", ["~recipe", *args.override])
    name = dm.val_names()[0]
    record = dm.val_records[name]
    net = ReferenceVOSModel(mask_stride=args.mask_stride)
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=0.05)
    start, steps = time.time(), 0
    for batch in batches_for(dm, args.seconds):
        h, w = batch.frames.shape[-2:]
        size = (h // args.mask_stride, w // args.mask_stride)
        n = max(int(s.masks.shape[0]) for s in batch.samples)
        prompts = torch.zeros((len(batch.samples), n, h, w), dtype=torch.bool)
        targets = []
        for i, s in enumerate(batch.samples):
            visible = s.masks[:, 0].flatten(1).any(1)  # objects prompted on the clip's first frame
            p, t = clip_targets(s.masks[visible], size)
            prompts[i, : p.shape[0]] = p
            targets.append(t)
        logits = net(batch.frames, prompts)  # padded objects have empty prompts and no target pixels
        loss = F.cross_entropy(logits, torch.stack(targets))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        steps += 1
        if steps % 200 == 0:
            print(f"step {steps} {time.time() - start:.0f}s loss {loss.item():.3f}", flush=True)
    net.eval()
    metric = DavisJF()
    for video in dm.val_dataloader()[0]:
        gt = record.videos[video.index]
        ids = [p.track_id for p in gt.prompts if p.frame == 0]
        first = gt.annotation_at(0).decode().masks
        hp, wp = video.frames.shape[-2:]
        prompts = torch.zeros((1, len(ids), hp, wp), dtype=torch.bool)
        for k, tid in enumerate(ids):
            m = torch.from_numpy(first[tid])[None, None].float()
            prompts[0, k, : video.valid_hw[0], : video.valid_hw[1]] = F.interpolate(m, size=video.valid_hw)[0, 0] > 0.5
        with torch.no_grad():
            logits = net(video.frames[None], prompts)[0]  # [1+N, T, h, w]
        full = logits_to_original(logits, (hp, wp), video.valid_hw, video.orig_hw).argmax(0)  # [T, H, W]
        tracks = [TrackPrediction(tid, None, 1.0, masks_to_rles(full == k + 1)) for k, tid in enumerate(ids)]
        metric.update(VideoPrediction(gt.video_id, gt.height, gt.width, gt.frames.names, tracks), gt)
    scores = {k: round(float(v), 4) for k, v in metric.compute().items() if k in ("J-Mean", "F-Mean", "J&F-Mean")}
    result = {"steps": steps, "seconds": args.seconds, **scores}
    report(result, args.json)


if __name__ == "__main__":
    main()
