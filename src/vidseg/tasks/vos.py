"""VOS — semi-supervised video object segmentation from first-appearance masks (TarViS §7 VOS, §8.4, §9.2).

Each object's reference mask is cut into `queries_per_object` raster-order strips (4 in training, 8 at
inference); every strip's stride-4 features (sampled at up to `pixels_per_query` random pixels, no gradient
through the pooling) are averaged into a query init; 16 background queries come from a 4x4 grid of the
reference frame minus the objects. A small object encoder refines them (self-attention over all queries,
cross-attention of each query to its own pixel features). The decoder then segments them in the whole clip;
an object's mask = max over its sub-query masks, background = max over the background masks.
Loss: fixed assignment (channel 0 = background, 1..N = objects in GT order), BCE + dice on every frame.
PET objects (points, `tasks/pet.py`) share the encoder, the background queries and the decoder groups.
With `matching` (ours, on in the tiny recipe) a matching readout against the reference frame is added to the
object logits (`tasks/vos_matching.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidseg.data.clip_dataset import distance_peak
from vidseg.data.records import Batch, Category, DatasetRecord, VideoPrediction
from vidseg.losses.masks import mask_losses
from vidseg.model.position import sine_position_2d
from vidseg.model.queries import LearnedQueries, QuerySet
from vidseg.tasks.base import Task
from vidseg.tasks.gvseg import GvSegConfig, spa_query_adders
from vidseg.tasks.vos_encoder import (
    KIND_BACKGROUND,
    KIND_MASK,
    KIND_POINT,
    ObjectEncoder,
    PointQueryInit,
    grid_background_tokens,
    strip_tokens,
)
from vidseg.tasks.vos_matching import MatchingReadout, pooled_masks


class VOSTask(Task):
    """Mask-guided video object segmentation (DAVIS / YouTube-VOS); PET objects ride along with p=point_prob."""

    name = "vos"
    needs_prompts = True

    def __init__(
        self,
        queries_per_object: int = 4,
        queries_per_object_eval: int = 8,
        pixels_per_query: int = 2048,
        pixels_per_query_eval: int = 16384,
        background_grid: int = 4,
        encoder_layers: int = 4,
        encoder_ffn: int = 2048,
        encoder_heads: int = 8,
        point_prob: float = 0.3,
        weights: Mapping[str, float] | None = None,
        num_points: int | None = 12544,
        deep_supervision: bool = True,
        seed: int = 22021994,
        clip_len: int | None = None,
        clip_overlap: int = 0,
        revive_lost: bool = False,
        gvseg: Mapping[str, Any] | None = None,
        detach_pooling: bool = True,
        token_pool: int = 1,
        label_with_background: bool = True,
        flip_tta: bool = False,
        matching: bool = False,
        matching_dim: int = 32,
        matching_gain: float = 0.5,
    ) -> None:
        super().__init__()
        self.q_train, self.q_eval = queries_per_object, queries_per_object_eval
        self.pix_train, self.pix_eval = pixels_per_query, pixels_per_query_eval
        self.grid = background_grid
        self.enc_cfg = dict(num_layers=encoder_layers, ffn_dim=encoder_ffn, n_heads=encoder_heads)
        if not 0.0 <= point_prob <= 1.0:
            raise ValueError(f"tasks.{self.name}.point_prob must be in [0, 1], got {point_prob}")
        self.point_prob = point_prob
        self.weights = {"bce": 5.0, "dice": 5.0, **dict(weights or {})}
        self.num_points, self.deep_supervision, self.seed = num_points, deep_supervision, seed
        self.encoder: ObjectEncoder | None = None
        self.point_init: PointQueryInit | None = None
        self.embeds: nn.ModuleDict | None = None
        self.gvseg = GvSegConfig.from_any(gvseg)
        self.spa_encoder: nn.Module | None = None
        self.detach_pooling = detach_pooling  # TarViS: no gradient into the features through the prompt pooling
        if int(token_pool) < 1:
            raise ValueError(f"{self.name}: token_pool must be >= 1, got {token_pool}")
        # ours: prompt tokens cut from the mask features average-pooled by this factor (2 with stride-2 masks keeps
        # the object encoder at the stride-4 token count; 1 = TarViS, the mask features themselves)
        self.token_pool = int(token_pool)
        self.current_step = 0  # set by the LightningModule (global step) before each training forward
        # inference: clip length/overlap (TarViS DAVIS 12/6, BURST 8/4; None = whole video as one clip)
        self.clip_len, self.clip_overlap, self.revive_lost = clip_len, clip_overlap, revive_lost
        # inference labels: argmax over background (max of the background queries) and objects (True, ours), or
        # over objects where the max logit > 0 with the background queries unused (False, TarViS)
        self.label_with_background = bool(label_with_background)
        self.flip_tta = bool(flip_tta)  # inference: average each clip's logits with its mirror image's (ours)
        # ours: a matching readout of every pixel against the reference frame added to the object logits
        self.matching_cfg = dict(key_dim=matching_dim, gain=matching_gain) if matching else None
        self.readout: MatchingReadout | None = None

    def setup(self, model: Any, vocabularies: Mapping[str, list[Category]]) -> None:
        super().setup(model, vocabularies)
        d = model.d_model
        if self.encoder is None:
            self.encoder = ObjectEncoder(d, **self.enc_cfg)
            self.point_init = PointQueryInit(d, num_levels=4)
            # decoder-side type embeddings of the two groups (content comes from the encoder)
            self.embeds = nn.ModuleDict({"background_vos": LearnedQueries(d, None), "vos": LearnedQueries(d, None)})
        for group in ("background_vos", "vos"):
            model.decoder.add_group(group)
        if self.gvseg.spa and self.spa_encoder is None:
            self.spa_encoder = self.gvseg.encoder(d)
        if self.matching_cfg is not None and self.readout is None:
            self.readout = MatchingReadout(d, **self.matching_cfg)

    # ------------------------------------------------------------------ queries
    def point_objects(self, step: int, n: int) -> list[bool]:
        """Which of the n objects of a batch are point (PET) objects; same decision for every sample/rank."""
        if self.point_prob <= 0:
            return [False] * n
        if self.point_prob >= 1:
            return [True] * n
        rng = np.random.default_rng([self.seed, step])
        return (rng.random(n) < self.point_prob).tolist()

    def build_queries(
        self,
        feats: Any,
        ref_masks: list[torch.Tensor],
        ref_frames: list[torch.Tensor],
        points: list[torch.Tensor | None],
        is_point: list[bool],
        q_per_obj: int,
        pixels: int,
        generator: torch.Generator | None = None,
    ) -> QuerySet:
        """Queries of B clips with the same N objects each (background first, then mask objects, then point
        objects). ref_masks[b]: bool [N, h4, w4] on each object's reference frame; ref_frames[b]: int64 [N]
        clip-frame indices; points[b]: [N, 2] (x, y) in [0, 1] (needed for point objects). The returned
        QuerySet carries `owners`: the object index (0..N-1) of every 'vos' query."""
        assert self.encoder is not None and self.point_init is not None and self.embeds is not None
        mf = feats.mask_features  # [B, T, d, h4, w4]
        grid_masks = ref_masks
        if self.token_pool > 1:  # coarser token grid; a pooled cell belongs to an object if any pixel does
            k = self.token_pool
            mf = F.avg_pool2d(mf.flatten(0, 1), k, ceil_mode=True).unflatten(0, mf.shape[:2])
            ref_masks = [F.max_pool2d(m[None].float(), k, ceil_mode=True)[0] > 0 for m in ref_masks]
        b, _, d, h4, w4 = mf.shape
        pos = sine_position_2d(h4, w4, d, device=mf.device, dtype=mf.dtype)[0]
        mask_objs = [k for k, p in enumerate(is_point) if not p]
        point_objs = [k for k, p in enumerate(is_point) if p]
        blocks: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = []
        inits: list[torch.Tensor] = []
        for i in range(b):
            fmap = mf[i].detach() if self.detach_pooling else mf[i]
            frame0 = int(ref_frames[i].min())
            parts = [grid_background_tokens(fmap[frame0], pos, ref_masks[i].any(0), self.grid, pixels, generator)]
            for k in mask_objs:
                parts.append(strip_tokens(fmap[int(ref_frames[i][k])], pos, ref_masks[i][k], q_per_obj, pixels,
                                          generator))
            tok = _cat_padded([p[0] for p in parts])
            tpos = _cat_padded([p[1] for p in parts])
            pad = _cat_padded([p[2] for p in parts], value=True)
            valid = (~pad).unsqueeze(-1).to(tok.dtype)
            init = (tok * valid).sum(1) / valid.sum(1).clamp(min=1)
            if point_objs:
                if points[i] is None:
                    raise ValueError("vos: point objects need points in the clip sample")
                levels = [f[i] for f in feats.features] + [feats.mask_features[i]]
                idx = torch.as_tensor(point_objs, device=mf.device)
                p_init, p_tok, p_pos = self.point_init(levels, points[i][idx].to(mf.dtype), ref_frames[i][idx])
                p_pad = torch.zeros(p_tok.shape[:2], dtype=torch.bool, device=mf.device)
                tok, tpos = _cat_padded([tok, p_tok]), _cat_padded([tpos, p_pos])
                pad = _cat_padded([pad, p_pad], value=True)
                init = torch.cat([init, p_init])
            blocks.append([(tok, tpos, pad)])
            inits.append(init)
        width = max(blk[0][0].shape[1] for blk in blocks)
        tokens = torch.stack([F.pad(blk[0][0], (0, 0, 0, width - blk[0][0].shape[1])) for blk in blocks])
        tok_pos = torch.stack([F.pad(blk[0][1], (0, 0, 0, width - blk[0][1].shape[1])) for blk in blocks])
        pads = torch.stack([F.pad(blk[0][2], (0, width - blk[0][2].shape[1]), value=True) for blk in blocks])
        n_bg = self.grid * self.grid
        kinds = torch.full((tokens.shape[1],), KIND_MASK, dtype=torch.long, device=mf.device)
        kinds[:n_bg] = KIND_BACKGROUND
        if point_objs:
            kinds[tokens.shape[1] - len(point_objs):] = KIND_POINT
        if self.gvseg.task_init:  # GvSeg: queries are the features sampled at the prompt (no object encoder)
            content = torch.stack(inits)
        else:
            content = self.encoder(torch.stack(inits), tokens, tok_pos, pads, kinds)
        qs = QuerySet([
            self.embeds["background_vos"].group("background_vos", content[:, :n_bg]),
            self.embeds["vos"].group("vos", content[:, n_bg:]),
        ])
        qs.owners = [k for k in mask_objs for _ in range(q_per_obj)] + point_objs
        if self.spa_encoder is not None:
            qs.query_adders = spa_query_adders(self.spa_encoder, ["vos"])
        qs.num_objects = len(is_point)
        if self.readout is not None:
            qs.readout = torch.stack([
                self.readout(feats.mask_features[i], mf[i], pooled_masks(grid_masks[i], self.token_pool),
                             ref_frames[i], is_point) for i in range(b)])
        return qs

    def init_queries(self, model: Any, feats: Any, batch: Batch) -> QuerySet:
        """Queries for every prompted object of every clip. Clips with fewer objects than the batch's largest
        count are padded with empty objects (their queries take part in the forward pass; `loss` ignores their
        masks through `queries.object_valid` [B, N]), so no clip's objects are dropped or turned into background."""
        counts = [int(s.masks.shape[0]) for s in batch.samples]
        if min(counts) == 0:
            raise ValueError(f"vos: clip without objects in its reference frame: {[s.video_id for s in batch.samples]}")
        n = max(counts)
        h4, w4 = feats.mask_features.shape[-2:]
        ref_masks, ref_frames, points = [], [], []
        for s, count in zip(batch.samples, counts):
            frames = (s.prompt_frames[:count] if s.prompt_frames is not None
                      else torch.zeros(count, dtype=torch.long)).clamp(min=0).to(s.masks.device)
            masks = s.masks[torch.arange(count, device=s.masks.device), frames]  # [N_s, H, W] on reference frames
            small = masks.new_zeros((n, h4, w4))  # padded objects: empty masks
            small[:count] = F.interpolate(masks[:, None].float(), size=(h4, w4), mode="area")[:, 0] > 0.5
            ref_masks.append(small)
            ref_frames.append(F.pad(frames, (0, n - count)))
            pts = None if s.points is None else _normalised_points(s.points[:count], s.masks.shape[-2:])
            if pts is not None and count < n:  # padded objects: the frame centre (ignored by the loss)
                pts = torch.cat([pts, pts.new_full((n - count, 2), 0.5)])
            points.append(pts)
        is_point = self.point_objects(self.current_step, n)
        qs = self.build_queries(feats, ref_masks, ref_frames, points, is_point, self.q_train, self.pix_train)
        qs.object_valid = torch.arange(n)[None] < torch.as_tensor(counts)[:, None]  # [B, N]
        return qs

    # ------------------------------------------------------------------ loss
    def object_logits(self, out: Any, layer: int, owners: list[int], n: int,
                      readout: torch.Tensor | None = None) -> torch.Tensor:
        """[B, 1+N, T, h, w]: background = max over background queries, object k = max over its queries;
        plus the matching readout [B, 1+N, T, h, w] (`QuerySet.readout`) where the task has one."""
        bg = out.group("background_vos", layer).mask_logits.amax(1, keepdim=True)
        vos = out.group("vos", layer).mask_logits
        own = torch.as_tensor(owners, device=vos.device)
        objs = [vos[:, own == k].amax(1) for k in range(n)]
        logits = torch.cat([bg, torch.stack(objs, 1)], 1)
        return logits if readout is None else logits + readout.to(logits.dtype)

    def loss(self, model: Any, feats: Any, queries: Any, out: Any, batch: Batch) -> dict[str, torch.Tensor]:
        n = queries.num_objects
        layers = range(out.num_predictions) if self.deep_supervision else [out.num_predictions - 1]
        targets = []
        for s in batch.samples:
            bg = ~s.masks.any(0, keepdim=True)
            targets.append(F.pad(torch.cat([bg, s.masks]).float(), (0, 0, 0, 0, 0, 0, 0, n - s.masks.shape[0])))
        target = torch.cat(targets)  # [B*(1+N), T, H, W], padded objects empty
        valid = getattr(queries, "object_valid", None)
        keep = None  # rows of real targets: background + each clip's own objects
        if valid is not None:
            keep = torch.cat([torch.ones(len(batch.samples), 1, dtype=torch.bool), valid.cpu()], 1).flatten()
            keep = keep.to(target.device)
        rows = target if keep is None else target[keep]
        totals: dict[str, torch.Tensor] = {}
        for layer in layers:
            logits = self.object_logits(out, layer, queries.owners, n, getattr(queries, "readout", None))
            logits = logits.flatten(0, 1)
            if keep is not None:
                logits = logits[keep]
            for k, v in mask_losses(logits, rows, float(rows.shape[0]), self.num_points).items():
                totals[k] = totals.get(k, 0.0) + self.weights[k] * v
        if self.weights.get("prototype", 0.0) > 0:
            totals["prototype"] = self.weights["prototype"] * prototype_loss(feats.mask_features, target, n)
        return totals

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_video(self, model: Any, video: Any, record: Any, dataset: str) -> VideoPrediction:
        """Overlapping clips of `clip_len` (None: the whole video as one clip); each clip's queries are
        re-encoded from the previous clips' predictions on the shared frames, objects prompted on later frames
        join when their prompt appears (see `vidseg.inference.vos_stream`)."""
        from vidseg.inference.vos_stream import predict_objects

        return predict_objects(self, model, video, record)

    def eval_point_objects(self, prompts: list) -> list[bool]:
        return [False] * len(prompts)

    def prompt_point(
        self, prompt: Any, mask: np.ndarray, record: Any, video: Any, padded: tuple[int, int]
    ) -> torch.Tensor | None:
        """The prompt's point in [0, 1] coordinates of the padded clip; mask-only prompts get the mask's
        distance-transform peak (the training rule), so PET also runs on mask datasets such as DAVIS."""
        if prompt.point is not None:
            x, y = prompt.point.x, prompt.point.y
        elif mask.any():
            x, y = distance_peak(mask)
        else:
            return None
        sy, sx = video.valid_hw[0] / record.height, video.valid_hw[1] / record.width
        return torch.tensor([(x + 0.5) * sx / padded[1], (y + 0.5) * sy / padded[0]])

    def make_metric(self, dataset: DatasetRecord) -> Any:
        from vidseg.metrics.jf import DavisJF

        return DavisJF()

    def train_sampler(self, num_frames: int = 3, factor: float = 7.5, consecutive: bool = False) -> Any:
        from vidseg.data.sampling import VOSClipSampler

        return VOSClipSampler(num_frames=num_frames, factor=factor)


def prototype_loss(mask_features: torch.Tensor, target: torch.Tensor, n: int) -> torch.Tensor:
    """Auxiliary dense loss on the stride-4 features (ours, not TarViS): every frame's GT regions (background +
    N objects) are average-pooled into prototypes, and each pixel must pick its own region's prototype (softmax CE
    over the 1+N prototypes of its frame, similarities / sqrt(d)). It trains object-discriminative features, which
    the prompt pooling of VOS/PET relies on, without waiting for other tasks' dense losses. Off in the paper recipes
    (weights.prototype = 0); weight 5 in the tiny VOS recipe, where it lifts J&F from 0.51 to 0.61 (it did not
    while VOS batches were cut to their smallest object count, i.e. mostly one object per clip).
    mask_features [B, T, d, h, w]; target [B*(1+N), T, H, W] in {0, 1} (background first)."""
    b, t, d, h, w = mask_features.shape
    regions = F.interpolate(target.float(), size=(h, w), mode="area").view(b, 1 + n, t, h, w)
    feats = mask_features.float()
    protos = torch.einsum("bkthw,btdhw->bktd", regions, feats) / regions.sum((-1, -2)).clamp(min=1e-6)[..., None]
    logits = torch.einsum("bktd,btdhw->bkthw", protos, feats) / d ** 0.5
    present = regions.sum((-1, -2)) > 0  # [B, 1+N, T]: absent regions are no candidates
    logits = logits.masked_fill(~present[..., None, None], float("-inf"))
    labels = regions.argmax(1)  # [B, T, h, w]: the region covering most of the cell
    covered = regions.amax(1) > 0.5
    ce = F.cross_entropy(logits, labels, reduction="none")  # [B, T, h, w]
    return (ce * covered).sum() / covered.sum().clamp(min=1)


def _normalised_points(points: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(x, y) pixel points -> [0, 1] coordinates (+0.5 pixel centre)."""
    h, w = int(hw[0]), int(hw[1])
    return torch.stack([(points[:, 0] + 0.5) / w, (points[:, 1] + 0.5) / h], -1)


def _cat_padded(blocks: list[torch.Tensor], value: float | bool = 0.0) -> torch.Tensor:
    """Concatenate [n_i, P_i, ...] blocks along dim 0 after padding dim 1 to the largest P."""
    width = max(b.shape[1] for b in blocks)
    out = []
    for b in blocks:
        extra = width - b.shape[1]
        if extra:
            pad = (0, 0, 0, extra) if b.dim() == 3 else (0, extra)
            b = F.pad(b, pad, value=value)
        out.append(b)
    return torch.cat(out)
