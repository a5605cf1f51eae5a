"""VIS — video instance segmentation (TarViS §7, §8.1–8.3).

Queries: `num_queries` learned instance queries, `num_background` background queries and the dataset's
semantic queries. Classes by similarity to the semantic queries (no-object = max over background).
Loss per decoder output: video-level Hungarian matching (2·class + 5·BCE + 5·dice on uniform points),
softmax CE over 1+C (no-object weight 0.1), BCE + dice on importance-sampled points, and an auxiliary
semantic CE of [max background mask, semantic masks] against a map drawn from the instance masks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vidseg.data.records import IGNORE_LABEL, Batch, Category, DatasetRecord, TrackPrediction, VideoPrediction
from vidseg.losses.masks import mask_losses, semantic_ce_loss
from vidseg.losses.matching import HungarianMatcher, MatchTargets
from vidseg.model.decoder import classify
from vidseg.model.queries import LearnedQueries, QueryGroup, QuerySet
from vidseg.tasks.base import Task
from vidseg.tasks.gvseg import (
    GridQueryInit,
    GvSegConfig,
    instance_contrastive_loss,
    shape_position_descriptor,
    spa_association,
    spa_query_adders,
)

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


def mask_pooled_features(mask_features: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Mask features [B, T, d, h, w] averaged under each query's soft mask sigmoid(logits) [B, Q, T, h, w]
    (detached: the class loss does not move the masks) -> [B, Q, d]."""
    weights = mask_logits.detach().sigmoid().to(mask_features.dtype)
    pooled = torch.einsum("bqthw,btdhw->bqd", weights, mask_features)
    return pooled / weights.sum(dim=(2, 3, 4)).clamp(min=1e-6).unsqueeze(-1)


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
        iou_threshold: float = 0.5,
        gvseg: Mapping[str, Any] | None = None,
        pooled_class: bool = False,
    ) -> None:
        super().__init__()
        self.num_queries, self.num_background = num_queries, num_background
        # ours, off in the paper recipes: add the mask features average-pooled under each instance query's own
        # (detached) mask, through a zero-initialised linear layer, to its class embedding
        self.pooled_class = bool(pooled_class)
        self.class_pool: torch.nn.Linear | None = None
        self.weights = {**DEFAULT_WEIGHTS, **dict(weights or {})}
        self.no_object_weight = no_object_weight
        self.num_points, self.aux_points = num_points, aux_points
        self.matcher = HungarianMatcher(
            self.weights["class"], self.weights["bce"], self.weights["dice"], num_points=match_points
        )
        self.deep_supervision = deep_supervision
        self.clip_len, self.clip_overlap, self.top_k = clip_len, clip_overlap, top_k
        self.iou_threshold = iou_threshold  # cross-clip track linking: overlap mask IoU must exceed this
        self.sampler_cfg = dict(sampler or {})
        self.instance: LearnedQueries | None = None
        self.background: LearnedQueries | None = None
        self.gvseg = GvSegConfig.from_any(gvseg)  # GvSeg switches (all off = plain TarViS)
        self.spa_encoder: torch.nn.Module | None = None
        self.grid_init: GridQueryInit | None = None

    # ------------------------------------------------------------------ set-up and queries
    def setup(self, model: Any, vocabularies: Mapping[str, list[Category]]) -> None:
        super().setup(model, vocabularies)
        d = model.d_model
        if self.instance is None:
            self.instance = LearnedQueries(d, self.num_queries)
            self.background = LearnedQueries(d, self.num_background)
            if self.gvseg.spa:
                self.spa_encoder = self.gvseg.encoder(d)
            if self.gvseg.task_init:
                self.grid_init = GridQueryInit(d, self.gvseg.grid, self.gvseg.grid_queries or self.num_queries)
        if self.pooled_class and self.class_pool is None:
            self.class_pool = torch.nn.Linear(d, d)
            torch.nn.init.zeros_(self.class_pool.weight)
            torch.nn.init.zeros_(self.class_pool.bias)
        for group in ("instance", "background", "semantic"):
            model.decoder.add_group(group)
        for key, cats in vocabularies.items():
            model.semantic_bank.add_vocabulary(key, len(cats))

    def instance_group(self, feats: Any) -> QueryGroup:
        """Learned instance queries, or (GvSeg task-oriented init) features sampled on an S x S grid of F8."""
        assert self.instance is not None, "call setup() first"
        if self.grid_init is None:
            return self.instance.group("instance")
        return QueryGroup("instance", self.grid_init(feats.features[2]), self.instance.type_embed)

    def semantic_group(self, model: Any, feats: Any, dataset: str) -> QueryGroup:
        return model.semantic_bank.group(dataset)

    def query_set(self, model: Any, dataset: str, feats: Any = None) -> QuerySet:
        """Instance, background and the dataset's semantic queries; with GvSeg SPA, `query_adders` feeds the
        shape-position descriptor of the instance queries' previous masks into decoder self-attention."""
        assert self.background is not None, "call setup() first"
        if feats is None and self.grid_init is not None:
            raise ValueError("vis: GvSeg task-oriented init needs the encoded features to build queries")
        qs = QuerySet([self.instance_group(feats), self.background.group("background"),
                       self.semantic_group(model, feats, dataset)])
        if self.spa_encoder is not None:
            qs.query_adders = spa_query_adders(self.spa_encoder, ["instance"])
        return qs

    def init_queries(self, model: Any, feats: Any, batch: Batch) -> QuerySet:
        return self.query_set(model, batch.dataset, feats)

    # ------------------------------------------------------------------ loss
    def class_logits(self, out: Any, layer: int, feats: Any = None) -> torch.Tensor:
        """[B, Q, 1+C] by similarity to the semantic queries (TarViS); with `pooled_class`, the instance
        embeddings first get the projected mask-pooled features (`feats` = the clip's encoded features)."""
        inst, bg, sem = out.group("instance", layer), out.group("background", layer), out.group("semantic", layer)
        embeddings = inst.embeddings
        if self.class_pool is not None:
            if feats is None:
                raise ValueError("vis: pooled_class needs the encoded features to classify the instance queries")
            embeddings = embeddings + self.class_pool(mask_pooled_features(feats.mask_features, inst.mask_logits))
        return classify(embeddings, sem.embeddings, bg.embeddings)

    def instance_losses(self, out: Any, batch: Batch, feats: Any = None) -> dict[str, torch.Tensor]:
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
        sem_targets = [  # once per batch, shared by every supervised output
            semantic_target_from_instances(m, c, s.pad_mask, tuple(s.masks.shape[-2:]))
            for s, c, m in zip(batch.samples, cls_t, mask_t)
        ] if self.weights.get("aux_semantic") else []
        for layer in layers:
            inst = out.group("instance", layer)
            logits = self.class_logits(out, layer, feats)  # [B, Q, 1+C]
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
                terms["aux_semantic"] = self.aux_semantic_loss(out, layer, sem_targets)
            for k, v in terms.items():
                totals[k] = totals.get(k, 0.0) + self.weights[k] * v
        return totals

    def aux_semantic_loss(self, out: Any, layer: int, targets: list[torch.Tensor]) -> torch.Tensor:
        """Semantic CE of [background, semantic queries] of one output against the class maps drawn from the
        instance masks (`semantic_target_from_instances`, one [T, H, W] per clip)."""
        bg, sem = out.group("background", layer), out.group("semantic", layer)
        losses = []
        for b, target in enumerate(targets):
            logits = torch.cat([bg.mask_logits[b].amax(0, keepdim=True), sem.mask_logits[b]])  # [1+C, T, h, w]
            losses.append(semantic_ce_loss(logits, target, self.aux_points))
        return torch.stack(losses).mean()

    def loss(self, model: Any, feats: Any, queries: Any, out: Any, batch: Batch) -> dict[str, torch.Tensor]:
        losses = self.instance_losses(out, batch, feats)
        if self.gvseg.contrastive:
            losses["contrastive"] = self.contrastive_loss(model, feats, queries, batch)
        return losses

    def contrastive_loss(self, model: Any, feats: Any, queries: Any, batch: Batch) -> torch.Tensor:
        """GvSeg temporal contrastive loss: the clip is decoded as two sub-clips (first frame / the rest); each
        is matched to the GT restricted to its frames; same-identity query pairs are positives only if the GT
        shape-position descriptor changed by less than tau (ΔH gating), other pairs negatives."""
        t = batch.frames.shape[1]
        if t < 2:
            return batch.frames.new_zeros((), dtype=torch.float32)
        parts = [self._decode_frames(model, feats, queries, sl) for sl in (slice(0, 1), slice(1, t))]
        d = feats.mask_features.shape[2]
        total = []
        for b, s in enumerate(batch.samples):
            embs, ids, hs = [], [], []
            for (out, sl) in parts:
                masks = s.masks[:, sl]
                visible = masks.flatten(1).any(1)
                sub = dataclasses.replace(feats, mask_features=feats.mask_features[:, sl])
                logits = self.class_logits(out, -1, sub)[b : b + 1]
                targets = MatchTargets.pad([s.class_ids[visible]], [masks[visible]])
                qi, ti = self.matcher(logits, out.group("instance", -1).mask_logits[b : b + 1], targets)[0]
                emb = out.group("instance", -1).queries[b, qi.to(logits.device)]
                tid = s.track_ids[visible][ti.to(logits.device)]
                small = F.interpolate(masks[visible][ti].float(), size=(64, 64), mode="nearest") > 0.5
                hs.append(shape_position_descriptor(small, outside_value=-1.0 / d**0.5))
                embs.append(emb)
                ids.append(tid)
            if len(ids[0]) and len(ids[1]):
                total.append(instance_contrastive_loss(
                    embs[0], embs[1], ids[0], ids[1], hs[0], hs[1], self.gvseg.tau, self.gvseg.temperature,
                    self.gvseg.loss_form, self.gvseg.weight))
        if not total:
            return feats.mask_features.sum() * 0.0
        return torch.stack(total).mean()

    @staticmethod
    def _decode_frames(model: Any, feats: Any, queries: Any, sl: slice) -> tuple[Any, slice]:
        sub = dataclasses.replace(feats, features=[f[:, sl] for f in feats.features],
                                  mask_features=feats.mask_features[:, sl])
        return model.decode(sub, queries, getattr(queries, "query_adders", None)), sl

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_clip(self, model: Any, frames: torch.Tensor, dataset: str) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """One clip (uint8 [t, 3, H, W]) -> class probabilities [Q, 1+C], instance mask logits [Q, t, h4, w4]
        and the decoder output."""
        device = next(model.parameters()).device
        feats = model.encode(frames.unsqueeze(0).to(device))
        qs = self.query_set(model, dataset, feats)
        out = model.decode(feats, qs, getattr(qs, "query_adders", None))
        return self.class_logits(out, -1, feats)[0].softmax(-1), out.group("instance", -1).mask_logits[0], out

    def clip_candidates(self, probs: torch.Tensor, dataset: str) -> torch.Tensor:
        """Queries of a clip that become or extend tracks: those owning one of its top-K (query, class) pairs."""
        fg = probs[:, 1:]
        k = min(self.top_k, fg.numel())
        return torch.unique(fg.flatten().topk(k).indices // fg.shape[1])

    def stitch_tracks(self, model: Any, video: Any, dataset: str, on_clip: Any = None) -> tuple[Any, Any]:
        """Run overlapping clips of `clip_len`/`clip_overlap` (None: one clip) and link their candidate queries
        into video tracks (`vidseg.inference.stitch.TrackStitcher`); `on_clip(clip, out, upsample)` sees
        every clip's decoder output. Returns the stitcher and the video's frames. Tracks are linked by overlap
        mask IoU (TarViS), or with GvSeg SPA by S = cos(q + H) of the instance queries (`spa_association`)."""
        from vidseg.inference.stitch import TrackStitcher, make_upsampler
        from vidseg.inference.stream import as_video_frames, stream_clips

        frames = as_video_frames(video)
        up = make_upsampler(frames.padded_hw, frames.valid_hw, frames.orig_hw)
        assoc = None if self.spa_encoder is None else spa_association(self.spa_encoder)
        stitcher = TrackStitcher(frames.num_frames, up, self.iou_threshold, assoc, self.gvseg.association_threshold)
        for clip in stream_clips(frames, self.clip_len, self.clip_overlap):
            probs, logits, out = self.predict_clip(model, clip.frames, dataset)
            keep = self.clip_candidates(probs, dataset)
            emb = None if assoc is None else out.group("instance", -1).queries[0, keep]
            stitcher.add_clip(clip.start, clip.overlap, probs[keep], logits[keep], emb)
            if on_clip is not None:
                on_clip(clip, out, up)
            stitcher.finish(clip.next_start)
        return stitcher, frames

    @torch.no_grad()
    def predict_video(self, model: Any, video: Any, record: Any, dataset: str) -> VideoPrediction:
        """Top-K (track, class) pairs of the video over class probabilities averaged across a track's clips
        (a track may appear with several classes); tracks are stitched across overlapping clips."""
        stitcher, frames = self.stitch_tracks(model, video, dataset)
        tracks = list(stitcher.tracks.values())
        cats = self.vocabularies[dataset]
        out: list[TrackPrediction] = []
        if tracks:
            fg = torch.stack([t.probs for t in tracks])[:, 1:]  # [N, C]
            scores, flat = fg.flatten().topk(min(self.top_k, fg.numel()))
            for rank, (sc, f) in enumerate(zip(scores.tolist(), flat.tolist())):
                trk = tracks[f // fg.shape[1]]
                out.append(TrackPrediction(rank + 1, cats[f % fg.shape[1]].id, float(sc), list(trk.masks)))
        names = list(record.frames.names)
        return VideoPrediction(record.video_id, frames.orig_hw[0], frames.orig_hw[1], names, tracks=out)

    def make_metric(self, dataset: DatasetRecord) -> Any:
        from vidseg.metrics.ytvis_ap import YTVISMeanAP

        return YTVISMeanAP(category_ids=[c.id for c in dataset.categories])
