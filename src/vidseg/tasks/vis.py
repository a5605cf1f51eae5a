"""VIS — video instance segmentation (TarViS §7, §8.1–8.3).

Queries: `num_queries` learned instance queries, `num_background` background queries and the dataset's
semantic queries. Classes by similarity to the semantic queries (no-object = max over background).
Loss per decoder output: video-level Hungarian matching (2·class + 5·BCE + 5·dice on uniform points),
softmax CE over 1+C (no-object weight 0.1), BCE + dice on importance-sampled points, and an auxiliary
semantic CE of [max background mask, semantic masks] against a map drawn from the instance masks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vidseg.data.records import IGNORE_LABEL, Batch, Category, DatasetRecord, TrackPrediction, VideoPrediction
from vidseg.inference.resize import logits_to_original, masks_to_rles
from vidseg.losses.masks import mask_losses, semantic_ce_loss
from vidseg.losses.matching import HungarianMatcher, MatchTargets
from vidseg.model.decoder import classify
from vidseg.model.queries import LearnedQueries, QuerySet
from vidseg.tasks.base import Task

DEFAULT_WEIGHTS = {"class": 2.0, "bce": 5.0, "dice": 5.0, "aux_semantic": 2.0}


def global_num_masks(count: int, device: torch.device) -> float:
    """Number of GT masks averaged across DDP ranks (TarViS normalisation), at least 1."""
    n = torch.tensor(float(count), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return max(float(n), 1.0)


def semantic_target_from_instances(
    masks: torch.Tensor, class_ids: torch.Tensor, pad_mask: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """[T, H, W] class map (0 = background, c + 1 = class c) drawn from instance masks, smaller on top;
    padding is IGNORE_LABEL. Masks [N, T, H, W] are brought to `size` by nearest resizing."""
    n, t = masks.shape[:2]
    target = torch.zeros((t, *size), dtype=torch.long, device=masks.device)
    if n:
        small = F.interpolate(masks.float(), size=size, mode="nearest") > 0.5  # [N, T, h, w]
        order = torch.argsort(masks.flatten(1).sum(1), descending=True)
        for i in order.tolist():  # one paint per target (≤ a few dozen), not per pixel
            target[small[i]] = int(class_ids[i]) + 1
    pad = F.interpolate(pad_mask[None, None].float(), size=size, mode="nearest")[0, 0] > 0.5
    target[:, ~pad] = IGNORE_LABEL
    return target


class VISTask(Task):
    """Video instance segmentation on YouTube-VIS / OVIS style data."""

    name = "vis"

    def __init__(
        self,
        num_queries: int = 128,
        num_background: int = 1,
        weights: Mapping[str, float] | None = None,
        no_object_weight: float = 0.1,
        num_points: int | None = 12544,
        match_points: int = 12544,
        aux_points: int | None = 12544,
        deep_supervision: bool = True,
        clip_len: int = 12,
        clip_overlap: int = 6,
        top_k: int = 10,
        sampler: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.num_queries, self.num_background = num_queries, num_background
        self.weights = {**DEFAULT_WEIGHTS, **dict(weights or {})}
        self.no_object_weight = no_object_weight
        self.num_points, self.aux_points = num_points, aux_points
        self.matcher = HungarianMatcher(
            self.weights["class"], self.weights["bce"], self.weights["dice"], num_points=match_points
        )
        self.deep_supervision = deep_supervision
        self.clip_len, self.clip_overlap, self.top_k = clip_len, clip_overlap, top_k
        self.sampler_cfg = dict(sampler or {})
        self.instance: LearnedQueries | None = None
        self.background: LearnedQueries | None = None

    # ------------------------------------------------------------------ set-up and queries
    def setup(self, model: Any, vocabularies: Mapping[str, list[Category]]) -> None:
        super().setup(model, vocabularies)
        d = model.d_model
        if self.instance is None:
            self.instance = LearnedQueries(d, self.num_queries)
            self.background = LearnedQueries(d, self.num_background)
        for group in ("instance", "background", "semantic"):
            model.decoder.add_group(group)
        for key, cats in vocabularies.items():
            model.semantic_bank.add_vocabulary(key, len(cats))

    def query_set(self, model: Any, dataset: str) -> QuerySet:
        assert self.instance is not None and self.background is not None, "call setup() first"
        return QuerySet(
            [self.instance.group("instance"), self.background.group("background"),
             model.semantic_bank.group(dataset)]
        )

    def init_queries(self, model: Any, feats: Any, batch: Batch) -> QuerySet:
        return self.query_set(model, batch.dataset)

    # ------------------------------------------------------------------ loss
    def class_logits(self, out: Any, layer: int) -> torch.Tensor:
        inst, bg, sem = out.group("instance", layer), out.group("background", layer), out.group("semantic", layer)
        return classify(inst.embeddings, sem.embeddings, bg.embeddings)

    def instance_losses(self, out: Any, batch: Batch) -> dict[str, torch.Tensor]:
        """Matching + class CE + mask BCE/dice (+ aux semantic CE) summed over the supervised outputs."""
        keep = [~s.iscrowd if s.iscrowd is not None else torch.ones_like(s.class_ids, dtype=torch.bool)
                for s in batch.samples]
        cls_t = [s.class_ids[k] for s, k in zip(batch.samples, keep)]
        mask_t = [s.masks[k] for s, k in zip(batch.samples, keep)]
        targets = MatchTargets.pad(cls_t, mask_t)
        device = batch.frames.device
        num_masks = global_num_masks(sum(targets.counts), device)
        layers = range(out.num_predictions) if self.deep_supervision else [out.num_predictions - 1]
        totals: dict[str, torch.Tensor] = {}
        for layer in layers:
            inst = out.group("instance", layer)
            logits = self.class_logits(out, layer)  # [B, Q, 1+C]
            matches = self.matcher(logits, inst.mask_logits, targets)
            tgt_cls = torch.zeros(logits.shape[:2], dtype=torch.long, device=device)
            pred_m, true_m = [], []
            for b, (qi, ti) in enumerate(matches):
                tgt_cls[b, qi.to(device)] = cls_t[b][ti.to(device)] + 1
                pred_m.append(inst.mask_logits[b, qi.to(device)])
                true_m.append(mask_t[b][ti.to(device)])
            weight = torch.ones(logits.shape[-1], device=device)
            weight[0] = self.no_object_weight
            terms = {"class": F.cross_entropy(logits.transpose(1, 2), tgt_cls, weight=weight)}
            terms.update(mask_losses(torch.cat(pred_m), torch.cat(true_m), num_masks, self.num_points))
            if self.weights.get("aux_semantic"):
                terms["aux_semantic"] = self.aux_semantic_loss(out, batch, layer, cls_t, mask_t)
            for k, v in terms.items():
                totals[k] = totals.get(k, 0.0) + self.weights[k] * v
        return totals

    def aux_semantic_loss(self, out: Any, batch: Batch, layer: int, cls_t: list, mask_t: list) -> torch.Tensor:
        bg, sem = out.group("background", layer), out.group("semantic", layer)
        losses = []
        for b, s in enumerate(batch.samples):
            logits = torch.cat([bg.mask_logits[b].amax(0, keepdim=True), sem.mask_logits[b]])  # [1+C, T, h, w]
            target = semantic_target_from_instances(mask_t[b], cls_t[b], s.pad_mask, tuple(s.masks.shape[-2:]))
            losses.append(semantic_ce_loss(logits, target, self.aux_points))
        return torch.stack(losses).mean()

    def loss(self, model: Any, feats: Any, queries: Any, out: Any, batch: Batch) -> dict[str, torch.Tensor]:
        return self.instance_losses(out, batch)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_video(self, model: Any, video: Any, record: Any, dataset: str) -> VideoPrediction:
        """Top-K (query, class) pairs of the whole video decoded as one clip."""
        device = next(model.parameters()).device
        frames = video.frames.unsqueeze(0).to(device)
        feats = model.encode(frames)
        out = model.decode(feats, self.query_set(model, dataset))
        probs = self.class_logits(out, -1)[0].softmax(-1)[:, 1:]  # [Q, C]
        c = probs.shape[1]
        k = min(self.top_k, probs.numel())
        scores, flat = probs.flatten().topk(k)
        q_idx, c_idx = flat // c, flat % c
        logits = out.group("instance", -1).mask_logits[0, q_idx]  # [K, T, h4, w4]
        masks = logits_to_original(logits, tuple(frames.shape[-2:]), video.valid_hw, video.orig_hw) > 0
        cats = self.vocabularies[dataset]
        tracks = [
            TrackPrediction(i + 1, cats[int(ci)].id, float(sc), masks_to_rles(masks[i]))
            for i, (sc, ci) in enumerate(zip(scores.tolist(), c_idx.tolist()))
        ]
        names = list(record.frames.names)
        return VideoPrediction(record.video_id, video.orig_hw[0], video.orig_hw[1], names, tracks=tracks)

    def make_metric(self, dataset: DatasetRecord) -> Any:
        from vidseg.metrics.ytvis_ap import YTVISMeanAP

        return YTVISMeanAP(category_ids=[c.id for c in dataset.categories])
