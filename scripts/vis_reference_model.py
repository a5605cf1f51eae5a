"""A minimal query model for VIS, to calibrate the synthetic data against the learning bars of issue #5.

The issue gives a scale for its VIS bar: "a 60-line query model with a 4-stage CNN reached VIS AP 0.17 / AP50 0.38
at 64 px in 4 minutes". This is such a model, trained on the same batches as `python -m vidseg.train task=vis`
(one thread) and scored by the same inference and metric (whole video as one clip, top-10 (query, class) pairs,
`YTVISMeanAP`). If it stays far below that scale on a synthetic dataset, the dataset is harder than the one the
bar was set on.

Model: 4 stages of two 3x3 conv-BN-ReLU (stride 2 each, 32/64/96/128 channels); an FPN sum from stride 16 down to
the mask stride gives the pixel embeddings; 16 learned queries go through 3 `nn.TransformerDecoder` layers over
the clip's stride-16 features (learned spatial and temporal position embeddings); a linear class head over 1+C
and an MLP mask embedding dotted with the pixel embeddings. Loss: the task's Hungarian matcher (2 class + 5 BCE +
5 dice on 2048 points), softmax CE (no-object weight 0.1), dense BCE + dice; AdamW lr 1e-3, clip 1.0.

    python scripts/vis_reference_model.py --seconds 240
    python scripts/vis_reference_model.py --seconds 240 -x data.datasets.syn_ytvis.synthetic.class_colours=false
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from _timed_batches import batches_for, probe_data, reference_args, report
from vidseg.losses.masks import mask_losses
from vidseg.losses.matching import HungarianMatcher, MatchTargets
from vidseg.metrics.ytvis_ap import YTVISMeanAP
from vidseg.tasks.vis import VISTask


def conv_stage(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 conv-BN-ReLU, the first with stride 2."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )  # fmt: skip


class ReferenceVISModel(nn.Module):
    """uint8 clips [B, T, 3, H, W] -> class logits [B, Q, 1+C] and mask logits [B, Q, T, H/s, W/s]."""

    def __init__(self, num_classes: int, num_queries: int = 16, d: int = 64, mask_stride: int = 4) -> None:
        super().__init__()
        widths = (32, 64, 96, 128)
        self.stages = nn.ModuleList(conv_stage(a, b) for a, b in zip((3, *widths[:-1]), widths))
        self.lateral = nn.ModuleList(nn.Conv2d(c, d, 1) for c in widths)
        self.pixel_head = nn.Sequential(nn.Conv2d(d, d, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(d, d, 1))
        self.first_level = {2: 0, 4: 1}[mask_stride]
        self.queries = nn.Embedding(num_queries, d)
        self.pos = nn.Parameter(torch.randn(1, d, 4, 4) * 0.02)
        self.time_pos = nn.Parameter(torch.randn(64, d) * 0.02)
        layer = nn.TransformerDecoderLayer(d, 4, 256, dropout=0.0, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, 3)
        self.class_head = nn.Linear(d, num_classes + 1)
        self.mask_embed = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, d))

    def encode(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """Pixel embeddings [B, T, d, h, w] at the mask stride and the decoder memory [B, T * h16 * w16, d]."""
        b, t = frames.shape[:2]
        x = frames.flatten(0, 1).float() / 127.5 - 1
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        top = self.lateral[3](maps[3])
        memory = (top + F.interpolate(self.pos, size=top.shape[-2:], mode="bilinear")).unflatten(0, (b, t))
        memory = memory + self.time_pos[:t][None, :, :, None, None]
        memory = memory.permute(0, 1, 3, 4, 2).reshape(b, -1, top.shape[1])
        pixels = top
        for level in range(2, self.first_level - 1, -1):
            up = F.interpolate(pixels, size=maps[level].shape[-2:], mode="nearest")
            pixels = up + self.lateral[level](maps[level])
        return self.pixel_head(pixels).unflatten(0, (b, t)), memory

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        pixels, memory = self.encode(frames)
        q = self.decoder(self.queries.weight.expand(frames.shape[0], -1, -1), memory)
        return self.class_head(q), torch.einsum("bqd,btdhw->bqthw", self.mask_embed(q), pixels)


def main() -> None:
    args = reference_args(__doc__, "write {steps, AP, AP50, ...} here")
    _, dm = probe_data("vis", args.override)
    name = dm.val_names()[0]
    record = dm.val_records[name]
    net = ReferenceVISModel(len(record.categories), mask_stride=args.mask_stride)
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=0.05)
    matcher = HungarianMatcher(2.0, 5.0, 5.0, num_points=2048)
    class_weight = torch.ones(len(record.categories) + 1)
    class_weight[0] = 0.1
    start, steps = time.time(), 0
    for batch in batches_for(dm, args.seconds):
        cls_t, mask_t = [s.class_ids for s in batch.samples], [s.masks for s in batch.samples]
        targets = MatchTargets.pad(cls_t, mask_t)
        logits, masks = net(batch.frames)
        target_cls = torch.zeros(logits.shape[:2], dtype=torch.long)
        pred_m, true_m = [], []
        for i, (qi, ti) in enumerate(matcher(logits, masks, targets)):
            target_cls[i, qi] = cls_t[i][ti] + 1
            pred_m.append(masks[i, qi])
            true_m.append(mask_t[i][ti])
        m = mask_losses(torch.cat(pred_m), torch.cat(true_m), max(sum(targets.counts), 1), None)
        loss = 2 * F.cross_entropy(logits.transpose(1, 2), target_cls, weight=class_weight)
        loss = loss + 5 * m["bce"] + 5 * m["dice"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        steps += 1
        if steps % 200 == 0:
            print(f"step {steps} {time.time() - start:.0f}s loss {loss.item():.3f}", flush=True)
    net.eval()
    task = VISTask(num_queries=16, top_k=10)
    task.vocabularies = {name: record.categories}
    task.clip_len = None  # the whole video as one clip

    def predict_clip(model: nn.Module, frames: Tensor, dataset: str) -> tuple[Tensor, Tensor, None]:
        with torch.no_grad():
            logits, masks = net(frames[None])
        return logits[0].softmax(-1), masks[0], None

    task.predict_clip = predict_clip  # type: ignore[method-assign]
    metric = YTVISMeanAP(category_ids=[c.id for c in record.categories])
    for video in dm.val_dataloader()[0]:
        gt = record.videos[video.index]
        metric.update(task.predict_video(net, video, gt, name), gt)
    scores = {k: round(float(v), 4) for k, v in metric.compute().items() if k in ("AP", "AP50", "AP75", "AR10")}
    result = {"steps": steps, "seconds": args.seconds, **scores}
    report(result, args.json)


if __name__ == "__main__":
    main()
