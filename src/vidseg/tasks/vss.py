"""VSS — video semantic segmentation: one query per class of the dataset's vocabulary (+ background queries).

Loss: softmax cross-entropy over the query masks [background, class_1..class_C] against the semantic map
(ignore pixels excluded), on every decoder output. Inference: argmax over the class masks, scored by mIoU.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from vidseg.data.records import IGNORE_LABEL, Batch, Category, DatasetRecord, VideoPrediction
from vidseg.losses.masks import semantic_ce_loss
from vidseg.model.queries import LearnedQueries, QueryGroup, QuerySet
from vidseg.tasks.base import Task
from vidseg.tasks.gvseg import ClassQueue, GvSegConfig, PrototypeBank, semantic_contrastive_loss


class SemanticPrototypes(nn.Module):
    """GvSeg task-oriented init for semantic targets: per vocabulary, one EMA prototype query per class
    (`PrototypeBank`), plus (contrastive switch) a FIFO queue of class embeddings per vocabulary."""

    def __init__(self, cfg: GvSegConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.banks = nn.ModuleDict()
        self.queues = nn.ModuleDict()

    def add(self, key: str, num_classes: int, d_model: int) -> None:
        if self.cfg.task_init and key not in self.banks:
            self.banks[key] = PrototypeBank(num_classes, d_model, self.cfg.momentum)
        if self.cfg.contrastive and key not in self.queues:
            self.queues[key] = ClassQueue(num_classes, d_model, self.cfg.queue_size)

    def group(self, key: str, type_embed: torch.Tensor) -> QueryGroup:
        return QueryGroup("semantic", self.banks[key](), type_embed)

    def update(self, key: str, feats: Any, batch: Batch) -> None:
        """EMA update from the clip features and the semantic targets (padding ignored)."""
        sem = torch.stack([_padded_target(s.semantic, s.pad_mask) for s in batch.samples])
        self.banks[key].update(feats.mask_features, sem)

    def contrastive(self, key: str, out: Any, batch: Batch) -> torch.Tensor:
        """Semantic temporal contrastive loss: each clip's class queries of the classes present in its targets
        against the class queue (same class = positive)."""
        queries = out.group("semantic", -1).queries  # [B, C, d]
        losses = []
        for b, s in enumerate(batch.samples):
            present = torch.unique(s.semantic[s.semantic != IGNORE_LABEL])
            if present.numel():
                losses.append(semantic_contrastive_loss(queries[b, present], present, self.queues[key],
                                                        self.cfg.temperature, self.cfg.loss_form, self.cfg.weight))
        return torch.stack(losses).mean() if losses else queries.sum() * 0.0


def _padded_target(semantic: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
    target = semantic.clone()
    target[:, ~pad_mask] = IGNORE_LABEL
    return target


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
        clip_len: int | None = None,
        clip_overlap: int = 0,
        gvseg: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.clip_len, self.clip_overlap = clip_len, clip_overlap  # inference clips (None: whole video)
        self.num_background, self.weight = num_background, weight
        self.num_points, self.deep_supervision = num_points, deep_supervision
        self.background: LearnedQueries | None = None
        self.gvseg = GvSegConfig.from_any(gvseg)
        self.prototypes = SemanticPrototypes(self.gvseg)

    def setup(self, model: Any, vocabularies: Mapping[str, list[Category]]) -> None:
        super().setup(model, vocabularies)
        if self.background is None:
            self.background = LearnedQueries(model.d_model, self.num_background)
        for group in ("background", "semantic"):
            model.decoder.add_group(group)
        for key, cats in vocabularies.items():
            model.semantic_bank.add_vocabulary(key, len(cats))
            self.prototypes.add(key, len(cats), model.d_model)

    def query_set(self, model: Any, dataset: str) -> QuerySet:
        """Background queries and one query per class: learned (TarViS) or EMA prototypes (GvSeg init)."""
        assert self.background is not None, "call setup() first"
        if self.gvseg.task_init:
            semantic = self.prototypes.group(dataset, model.semantic_bank.type_embed)
        else:
            semantic = model.semantic_bank.group(dataset)
        return QuerySet([self.background.group("background"), semantic])

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
        losses = {"semantic": self.weight * total}
        if self.gvseg.task_init and self.training:
            self.prototypes.update(batch.dataset, feats, batch)
        if self.gvseg.contrastive:
            losses["contrastive"] = self.prototypes.contrastive(batch.dataset, out, batch)
        return losses

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_video(self, model: Any, video: Any, record: Any, dataset: str) -> VideoPrediction:
        """Class-mask logits of overlapping clips (`clip_len`/`clip_overlap`; None: one clip) averaged per
        frame, argmax at the original size; frames are finished and released as the clips move on."""
        from vidseg.inference.stitch import CompressedMaps, OverlapAverager, make_upsampler
        from vidseg.inference.stream import as_video_frames, stream_clips

        frames = as_video_frames(video)
        up = make_upsampler(frames.padded_hw, frames.valid_hw, frames.orig_hw)
        device = next(model.parameters()).device
        ids = torch.tensor([c.id for c in self.vocabularies[dataset]], dtype=torch.int32)
        logits, maps = OverlapAverager(), CompressedMaps()
        for clip in stream_clips(frames, self.clip_len, self.clip_overlap):
            qs = self.query_set(model, dataset)
            out = model.decode(model.encode(clip.frames.unsqueeze(0).to(device)), qs)
            logits.add(clip.start, 0, out.group("semantic", -1).mask_logits[0].transpose(0, 1))  # [t, C, h, w]
            for _, avg in logits.pop_finished(clip.next_start):
                maps.append(ids[up(avg[0][:, None]).argmax(0)[0].cpu()].numpy())
        return VideoPrediction(record.video_id, frames.orig_hw[0], frames.orig_hw[1], list(record.frames.names),
                               semantic_maps=maps)  # type: ignore[arg-type]

    def make_metric(self, dataset: DatasetRecord) -> Any:
        from vidseg.metrics.miou import SemanticMIoU

        return SemanticMIoU(categories=dataset.categories)
