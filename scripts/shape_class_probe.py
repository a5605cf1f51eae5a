"""How fast can the tiny model's features learn the synthetic shape classes, with the most direct supervision?

Trains the backbone (and, for `--source mask`, the neck) of the default VIS recipe plus one linear layer on the
features average-pooled under each ground-truth object mask (over the clip's frames), with cross-entropy on the
object's class (= its shape). No queries, no matching: an upper bound on how
fast the full model's class path can learn within its step budget. Prints the running accuracy (last 200
objects) every 50 steps.

The default VIS data is class-coloured (conf/data/synthetic_vis.yaml), where the colour gives the class away; the
shape-only question that README's figures answer needs `-x data.datasets.syn_ytvis.synthetic.class_colours=false`.

    python scripts/shape_class_probe.py --source backbone8 --seconds 150
    python scripts/shape_class_probe.py --source mask --seconds 150
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from _timed_batches import batches_for, probe_data
from vidseg.model.backbone import normalize_frames
from vidseg.utils.run import build_module

SOURCES = {"mask": None, "backbone4": 4, "backbone8": 8, "backbone16": 16}


def pooled_features(model: torch.nn.Module, batch, source: str) -> torch.Tensor:
    """[B, T, C, h, w] features of the clips: the neck's mask features or one backbone map."""
    if source == "mask":
        return model.encode(batch.frames, colour=batch.colour, valid=batch.pad_mask).mask_features
    b, t, _, h, w = batch.frames.shape
    images = normalize_frames(batch.frames.reshape(b * t, 3, h, w), model.pixel_mean, model.pixel_std)
    maps = model.backbone(images)
    return maps[model.backbone.strides.index(SOURCES[source])].unflatten(0, (b, t))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=sorted(SOURCES), default="backbone8")
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("-x", "--override", action="append", default=[], help="Hydra override of the train config")
    args = parser.parse_args()
    cfg, dm = probe_data("vis", args.override)
    model = build_module(cfg, dm).model
    channels = model.d_model if args.source == "mask" else model.backbone.channels[
        model.backbone.strides.index(SOURCES[args.source])]
    num_classes = len(next(iter(dm.train_records.values())).categories)
    head = torch.nn.Linear(channels, num_classes)
    params = [*model.backbone.parameters(), *model.neck.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, args.lr, weight_decay=0.05)
    start, hits = time.time(), []
    for step, batch in enumerate(batches_for(dm, args.seconds), start=1):
        fmap = pooled_features(model, batch, args.source)
        logits, labels = [], []
        for i, sample in enumerate(batch.samples):
            weights = F.interpolate(sample.masks.float(), size=fmap.shape[-2:], mode="area")  # [N, T, h, w]
            pooled = torch.einsum("nthw,tchw->nc", weights, fmap[i]) / weights.sum((1, 2, 3)).clamp(min=1e-6)[:, None]
            logits.append(head(pooled))
            labels.append(sample.class_ids)
        logits_t, labels_t = torch.cat(logits), torch.cat(labels)
        loss = F.cross_entropy(logits_t, labels_t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        hits.extend((logits_t.argmax(-1) == labels_t).float().tolist())
        if step % 50 == 0:
            print(f"step {step} {time.time() - start:.0f}s loss {loss.item():.3f} "
                  f"accuracy(last 200 objects) {np.mean(hits[-200:]):.3f}", flush=True)


if __name__ == "__main__":
    main()
