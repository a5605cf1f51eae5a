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

from vidseg.data.records import IGNORE_LABEL, Batch, Category, DatasetRecord, TrackPrediction, VideoPrediction
from vidseg.losses.masks import semantic_ce_loss
from vidseg.model.queries import QueryGroup
from vidseg.tasks.vis import VISTask
from vidseg.tasks.vss import SemanticPrototypes


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
        if not hasattr(self, "prototypes"):
            self.prototypes = SemanticPrototypes(self.gvseg)
        for key, cats in vocabularies.items():
            self.prototypes.add(key, len(cats), model.d_model)

    def semantic_group(self, model: Any, feats: Any, dataset: str) -> QueryGroup:
        """GvSeg VPS init: grid queries for things (VIS part), EMA class prototypes for the semantic queries."""
        if self.gvseg.task_init:
            return self.prototypes.group(dataset, model.semantic_bank.type_embed)
        return model.semantic_bank.group(dataset)

    def thing_mask(self, dataset: str, device: torch.device) -> torch.Tensor:
        return torch.tensor([c.isthing for c in self.vocabularies[dataset]], dtype=torch.bool, device=device)

    def loss(self, model: Any, feats: Any, queries: Any, out: Any, batch: Batch) -> dict[str, torch.Tensor]:
        losses = self.instance_losses(out, batch, feats)
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
        if self.gvseg.contrastive:
            losses["contrastive"] = self.contrastive_loss(model, feats, queries, batch)
        if self.gvseg.task_init and self.training:
            self.prototypes.update(batch.dataset, feats, batch)
        return losses

    # ------------------------------------------------------------------ inference
    def clip_candidates(self, probs: torch.Tensor, dataset: str) -> torch.Tensor:
        """Queries of a clip whose argmax class is a thing, scoring above the threshold and above no-object."""
        things = self.thing_mask(dataset, probs.device)
        scores, cls = probs[:, 1:].max(-1)
        keep = things[cls] & (scores > self.score_threshold) & (scores >= probs[:, 0])
        return torch.nonzero(keep).flatten()

    @torch.no_grad()
    def predict_video(self, model: Any, video: Any, record: Any, dataset: str) -> VideoPrediction:
        """Stuff map = argmax of the overlap-averaged semantic logits with thing classes suppressed; thing
        tracks stitched across clips, class = argmax of their averaged probabilities, kept above the score
        threshold and pasted in ascending score order (`tracks` over `semantic_maps`, see VideoPrediction)."""
        from vidseg.inference.stitch import CompressedMaps, OverlapAverager

        cats = self.vocabularies[dataset]
        ids = np.array([c.id for c in cats], dtype=np.int32)
        semantic, stuff_maps = OverlapAverager(), CompressedMaps()

        def on_clip(clip: Any, out: Any, upsample: Any) -> None:
            sem = out.group("semantic", -1).mask_logits[0]  # [C, t, h4, w4]
            things = self.thing_mask(dataset, sem.device)
            if bool((~things).any()):
                sem = sem.clone()
                sem[things] = -1e3
            semantic.add(clip.start, 0, sem.transpose(0, 1))
            for _, avg in semantic.pop_finished(clip.next_start):
                stuff_maps.append(ids[upsample(avg[0][:, None]).argmax(0)[0].cpu().numpy()])

        stitcher, frames = self.stitch_tracks(model, video, dataset, on_clip)
        tracks = list(stitcher.tracks.values())
        out: list[TrackPrediction] = []
        if tracks:
            probs = torch.stack([t.probs for t in tracks])  # [N, 1+C]
            scores, cls = probs[:, 1:].max(-1)
            things = self.thing_mask(dataset, probs.device)
            keep = torch.nonzero(things[cls] & (scores > self.score_threshold) & (scores >= probs[:, 0])).flatten()
            keep = keep[scores[keep].argsort(stable=True)][-self.max_tracks:]  # ascending: higher pasted last
            for tid, i in enumerate(keep.tolist(), start=1):
                out.append(TrackPrediction(tid, int(ids[int(cls[i])]), float(scores[i]), list(tracks[i].masks)))
        return VideoPrediction(record.video_id, frames.orig_hw[0], frames.orig_hw[1], list(record.frames.names),
                               tracks=out, semantic_maps=stuff_maps)  # type: ignore[arg-type]

    def make_metric(self, dataset: DatasetRecord) -> Any:
        """VPQ (VIPSeg windows 1/2/4/6/8 frames for VIPSeg-format data, Cityscapes-VPS windows otherwise) and STQ
        (KITTI-STEP or VIPSeg variant)."""
        from vidseg.metrics.stq import STQ
        from vidseg.metrics.vpq import VPQ
        from vidseg.tasks.base import MetricGroup

        vipseg = dataset.format == "vipseg"
        windows = (1, 2, 4, 6, 8) if vipseg else (1, 2, 3, 4)
        return MetricGroup({
            "vpq": VPQ(categories=dataset.categories, windows=windows),
            "stq": STQ(categories=dataset.categories, variant="vipseg" if vipseg else "kitti"),
        })
