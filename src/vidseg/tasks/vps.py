"""VPS — video panoptic segmentation (TarViS §7, §8.3, §9.1): VIS's instance part for thing tracks plus a
softmax CE over the C semantic-query masks against the semantic map (ignore regions excluded).

Inference: semantic map = argmax over stuff classes (thing logits suppressed); instance tracks = instance
queries whose argmax class is a thing and whose score passes the threshold, pasted in ascending score order
(higher scores overwrite lower ones and the stuff class).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from vidseg.data.records import IGNORE_LABEL, Batch, Category, DatasetRecord, VideoPrediction
from vidseg.inference.resize import logits_to_original
from vidseg.losses.masks import semantic_ce_loss
from vidseg.tasks.vis import VISTask


class VPSTask(VISTask):
    """Video panoptic segmentation on KITTI-STEP / Cityscapes-VPS / VIPSeg style data."""

    name = "vps"
    needs_semantic = True

    def __init__(
        self,
        semantic_weight: float = 2.0,
        semantic_points: int | None = 50176,
        score_threshold: float = 0.5,
        max_tracks: int = 1000,
        **vis_kwargs: Any,
    ) -> None:
        vis_kwargs.setdefault("weights", {"aux_semantic": 0.0})
        super().__init__(**vis_kwargs)
        self.weights["aux_semantic"] = 0.0  # VPS supervises the semantic queries directly
        self.semantic_weight, self.semantic_points = semantic_weight, semantic_points
        self.score_threshold, self.max_tracks = score_threshold, max_tracks

    def setup(self, model: Any, vocabularies: Mapping[str, list[Category]]) -> None:
        super().setup(model, vocabularies)

    def thing_mask(self, dataset: str, device: torch.device) -> torch.Tensor:
        return torch.tensor([c.isthing for c in self.vocabularies[dataset]], dtype=torch.bool, device=device)

    def loss(self, model: Any, feats: Any, queries: Any, out: Any, batch: Batch) -> dict[str, torch.Tensor]:
        losses = self.instance_losses(out, batch)
        layers = range(out.num_predictions) if self.deep_supervision else [out.num_predictions - 1]
        total = 0.0
        for layer in layers:
            sem = out.group("semantic", layer).mask_logits  # [B, C, T, h, w]
            per_clip = []
            for b, s in enumerate(batch.samples):
                if s.semantic is None:
                    raise ValueError(f"vps: clip of video {s.video_id} has no semantic map")
                target = s.semantic.clone()
                target[:, ~s.pad_mask] = IGNORE_LABEL
                per_clip.append(semantic_ce_loss(sem[b], target, self.semantic_points))
            total = total + torch.stack(per_clip).mean()
        losses["semantic"] = self.semantic_weight * total
        return losses

    @torch.no_grad()
    def predict_video(self, model: Any, video: Any, record: Any, dataset: str) -> VideoPrediction:
        device = next(model.parameters()).device
        frames = video.frames.unsqueeze(0).to(device)
        out = model.decode(model.encode(frames), self.query_set(model, dataset))
        padded = tuple(frames.shape[-2:])
        things = self.thing_mask(dataset, device)
        cats = self.vocabularies[dataset]
        ids = np.array([c.id for c in cats], dtype=np.int32)
        # stuff map: thing logits suppressed
        sem_logits = out.group("semantic", -1).mask_logits[0].clone()  # [C, T, h4, w4]
        if bool((~things).any()):
            sem_logits[things] = -1e3
        sem = logits_to_original(sem_logits, padded, video.valid_hw, video.orig_hw).argmax(0).cpu()  # [T, H, W]
        semantic = ids[sem.numpy()]
        instance = np.zeros_like(semantic, dtype=np.int32)
        # thing tracks
        probs = self.class_logits(out, -1)[0].softmax(-1)  # [Q, 1+C]
        scores, cls = probs[:, 1:].max(-1)
        keep = things[cls] & (scores > self.score_threshold) & (probs[:, 1:].max(-1).values >= probs[:, 0])
        q_idx = torch.nonzero(keep).flatten()
        q_idx = q_idx[scores[q_idx].argsort()][-self.max_tracks:]  # ascending score: higher pasted last
        if len(q_idx):
            logits = out.group("instance", -1).mask_logits[0, q_idx]
            masks = (logits_to_original(logits, padded, video.valid_hw, video.orig_hw) > 0).cpu().numpy()
            for track_id, (m, c) in enumerate(zip(masks, cls[q_idx].tolist()), start=1):
                instance[m] = track_id
                semantic[m] = ids[c]
        panoptic = [(semantic[t], instance[t]) for t in range(semantic.shape[0])]
        return VideoPrediction(record.video_id, video.orig_hw[0], video.orig_hw[1], list(record.frames.names),
                               panoptic_maps=panoptic)

    def make_metric(self, dataset: DatasetRecord) -> Any:
        from vidseg.metrics.vpq import VPQ

        return VPQ(categories=dataset.categories)
