"""VSS — video semantic segmentation: one query per class of the dataset's vocabulary (+ background queries).

Loss: softmax cross-entropy over the query masks [background, class_1..class_C] against the semantic map
(ignore pixels excluded), on every decoder output. Inference: argmax over the class masks, scored by mIoU.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from vidseg.data.records import IGNORE_LABEL, Batch, Category, DatasetRecord, VideoPrediction
from vidseg.inference.resize import class_maps_to_original
from vidseg.losses.masks import semantic_ce_loss
from vidseg.model.queries import LearnedQueries, QuerySet
from vidseg.tasks.base import Task


class VSSTask(Task):
    """Video semantic segmentation on VSPW-style data."""

    name = "vss"
    needs_semantic = True

    def __init__(
        self,
        num_background: int = 1,
        weight: float = 2.0,
        num_points: int | None = 50176,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        self.num_background, self.weight = num_background, weight
        self.num_points, self.deep_supervision = num_points, deep_supervision
        self.background: LearnedQueries | None = None

    def setup(self, model: Any, vocabularies: Mapping[str, list[Category]]) -> None:
        super().setup(model, vocabularies)
        if self.background is None:
            self.background = LearnedQueries(model.d_model, self.num_background)
        for group in ("background", "semantic"):
            model.decoder.add_group(group)
        for key, cats in vocabularies.items():
            model.semantic_bank.add_vocabulary(key, len(cats))

    def query_set(self, model: Any, dataset: str) -> QuerySet:
        assert self.background is not None, "call setup() first"
        return QuerySet([self.background.group("background"), model.semantic_bank.group(dataset)])

    def init_queries(self, model: Any, feats: Any, batch: Batch) -> QuerySet:
        return self.query_set(model, batch.dataset)

    @staticmethod
    def class_logits(out: Any, layer: int) -> torch.Tensor:
        """[B, 1+C, T, h, w]: max over background masks, then one mask per class."""
        bg, sem = out.group("background", layer), out.group("semantic", layer)
        return torch.cat([bg.mask_logits.amax(1, keepdim=True), sem.mask_logits], dim=1)

    def loss(self, model: Any, feats: Any, queries: Any, out: Any, batch: Batch) -> dict[str, torch.Tensor]:
        layers = range(out.num_predictions) if self.deep_supervision else [out.num_predictions - 1]
        total = 0.0
        for layer in layers:
            logits = self.class_logits(out, layer)
            per_clip = []
            for b, s in enumerate(batch.samples):
                if s.semantic is None:
                    raise ValueError(f"vss: clip of video {s.video_id} has no semantic map")
                target = torch.where(s.semantic == IGNORE_LABEL, s.semantic, s.semantic + 1)  # 0 = background
                target[:, ~s.pad_mask] = IGNORE_LABEL
                per_clip.append(semantic_ce_loss(logits[b], target, self.num_points))
            total = total + torch.stack(per_clip).mean()
        return {"semantic": self.weight * total}

    @torch.no_grad()
    def predict_video(self, model: Any, video: Any, record: Any, dataset: str) -> VideoPrediction:
        device = next(model.parameters()).device
        frames = video.frames.unsqueeze(0).to(device)
        out = model.decode(model.encode(frames), self.query_set(model, dataset))
        sem_logits = out.group("semantic", -1).mask_logits[0]  # [C, T, h4, w4]
        classes = class_maps_to_original(sem_logits, tuple(frames.shape[-2:]), video.valid_hw, video.orig_hw)
        ids = torch.tensor([c.id for c in self.vocabularies[dataset]], dtype=torch.int32)
        maps = [ids[m].numpy() for m in classes.cpu()]
        return VideoPrediction(record.video_id, video.orig_hw[0], video.orig_hw[1], list(record.frames.names),
                               semantic_maps=maps)

    def make_metric(self, dataset: DatasetRecord) -> Any:
        from vidseg.metrics.miou import SemanticMIoU

        return SemanticMIoU(categories=dataset.categories)
