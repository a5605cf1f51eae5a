"""Generic clip stitching (TarViS §9, without its §12 bugs): overlap logits are really averaged, tracks are
linked across clips by Hungarian matching on mask IoU over the overlap, class scores are averaged over a
track's clips, and finished frames are turned into original-size masks and released as the stream moves on.

- `OverlapAverager`: per-frame, per-key running sums of stride-4 logits; `pop_finished(upto)` hands out
  the averages of frames no later clip will touch.
- `match_by_iou`: maximal-IoU assignment between two sets of binarised overlap masks (scipy).
- `TrackStitcher`: query tracks of VIS/VPS clips -> video tracks (ids stable across clips, per-frame RLE).
  By default tracks are linked by overlap mask IoU (TarViS); an optional `AssociationScore` (GvSeg SPA:
  cos(q + H), `vidseg.tasks.gvseg.spa_association`) replaces the IoU with a score over query embeddings and
  the overlap masks, with its own threshold.
- `CompressedMaps`: a list-like sequence of int maps stored zlib-compressed (long videos' semantic maps).
Task-specific choices (which queries become tracks, classes, pasting) stay in the task files.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from vidseg.data.records import RLE
from vidseg.inference.resize import logits_to_original, masks_to_rles

Upsampler = Callable[[torch.Tensor], torch.Tensor]
"""[K, t, h4, w4] stride-4 logits -> [K, t, H, W] logits at the original frame size."""

AssociationScore = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(track overlap masks bool [P, O, h4, w4], track embeddings [P, d], query overlap logits [Q, O, h4, w4],
query embeddings [Q, d]) -> association scores [P, Q] (higher = more alike)."""


def make_upsampler(padded_hw: tuple[int, int], valid_hw: tuple[int, int], orig_hw: tuple[int, int]) -> Upsampler:
    """The TarViS resize of clip logits back to the original frame (upsample ×4, unpad, resize)."""

    def up(logits: torch.Tensor) -> torch.Tensor:
        return logits_to_original(logits, padded_hw, valid_hw, orig_hw)

    return up


class OverlapAverager:
    """Running sums of per-frame logits keyed by (frame, key); frames are averaged when finished."""

    def __init__(self) -> None:
        self.sums: dict[int, dict[int, torch.Tensor]] = {}
        self.counts: dict[int, dict[int, int]] = {}

    def add(self, start: int, key: int, logits: torch.Tensor) -> None:
        """Add `logits` [t, ...] of one key for frames start .. start + t - 1."""
        for i in range(logits.shape[0]):
            f = start + i
            frame_sums = self.sums.setdefault(f, {})
            frame_counts = self.counts.setdefault(f, {})
            if key in frame_sums:
                frame_sums[key] = frame_sums[key] + logits[i].float()
                frame_counts[key] += 1
            else:
                frame_sums[key] = logits[i].float().clone()
                frame_counts[key] = 1

    def average(self, frame: int) -> dict[int, torch.Tensor]:
        """Mean logits of every key present at `frame` (empty dict if none)."""
        return {k: s / self.counts[frame][k] for k, s in self.sums.get(frame, {}).items()}

    def keys_at(self, frame: int) -> list[int]:
        return list(self.sums.get(frame, {}))

    def pop_finished(self, upto: int) -> Iterator[tuple[int, dict[int, torch.Tensor]]]:
        """Yield (frame, {key: mean logits}) for every pending frame < upto, in order, and forget them."""
        for f in sorted(f for f in self.sums if f < upto):
            avg = self.average(f)
            del self.sums[f], self.counts[f]
            yield f, avg

    def __len__(self) -> int:
        return len(self.sums)


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix [P, Q] between bool masks a [P, ...] and b [Q, ...] (0 where both are empty)."""
    fa, fb = a.flatten(1).float(), b.flatten(1).float()
    inter = fa @ fb.T
    union = fa.sum(1, keepdim=True) + fb.sum(1)[None] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def match_by_iou(prev: torch.Tensor, cur: torch.Tensor, threshold: float) -> list[tuple[int, int]]:
    """Hungarian (maximising IoU) between prev [P, ...] and cur [Q, ...] masks; pairs with IoU > threshold."""
    if prev.shape[0] == 0 or cur.shape[0] == 0:
        return []
    iou = mask_iou(prev, cur).cpu().numpy()
    rows, cols = linear_sum_assignment(iou, maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if iou[r, c] > threshold]


def match_by_score(scores: torch.Tensor, threshold: float) -> list[tuple[int, int]]:
    """Hungarian (maximising the total score) over a [P, Q] score matrix; pairs with score > threshold."""
    if scores.dim() != 2:
        raise ValueError(f"match_by_score expects a [P, Q] score matrix, got shape {tuple(scores.shape)}")
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        return []
    s = scores.detach().float().cpu().numpy()
    if not np.isfinite(s).all():
        raise ValueError("match_by_score: association scores contain NaN or inf")
    rows, cols = linear_sum_assignment(s, maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if s[r, c] > threshold]


@dataclass
class StitchedTrack:
    """A video-level track: its per-clip class probabilities (averaged) and per-frame RLE masks."""

    track_id: int
    num_frames: int
    prob_sum: torch.Tensor | None = None  # [1+C] sum of per-clip class probabilities
    clips: int = 0
    embedding: torch.Tensor | None = None  # [d] query embedding in the latest clip (score association only)
    masks: list[RLE | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.masks:
            self.masks = [None] * self.num_frames

    @property
    def probs(self) -> torch.Tensor:
        assert self.prob_sum is not None
        return self.prob_sum / max(self.clips, 1)


class TrackStitcher:
    """Links the query tracks of successive clips into video tracks.

    add_clip(clip_start, overlap, probs [Q, 1+C], logits [Q, t, h4, w4]): queries are matched to the tracks
    present on the `overlap` shared frames by Hungarian matching on binarised IoU of the averaged logits
    there (a match needs IoU > iou_threshold); matched queries extend their track, the rest start new
    tracks (ids in order of appearance). Logits are averaged on overlaps; class probabilities over clips.
    With `association` (and `embeddings` [Q, d] given to add_clip), the Hungarian matching maximises
    association(track overlap masks, track embeddings, query overlap logits, query embeddings) instead of
    the IoU and a match needs a score > association_threshold; a track's embedding is its query's in the
    latest clip. finish(upto): frames < upto become original-size RLE masks (logit > 0), logits released.
    """

    def __init__(
        self,
        num_frames: int,
        upsample: Upsampler,
        iou_threshold: float = 0.5,
        association: AssociationScore | None = None,
        association_threshold: float = 0.5,
    ) -> None:
        self.num_frames, self.upsample, self.iou_threshold = num_frames, upsample, iou_threshold
        self.association, self.association_threshold = association, association_threshold
        self.tracks: dict[int, StitchedTrack] = {}
        self.logits = OverlapAverager()
        self._next_id = 1

    def add_clip(
        self,
        start: int,
        overlap: int,
        probs: torch.Tensor,
        logits: torch.Tensor,
        embeddings: torch.Tensor | None = None,
    ) -> list[int]:
        """Returns the track id given to each query (same order as `probs`). `embeddings` [Q, d]: the
        queries' association embeddings, required with an `association` score (ignored without one)."""
        if self.association is not None and (embeddings is None or embeddings.shape[0] != probs.shape[0]):
            got = None if embeddings is None else tuple(embeddings.shape)
            raise ValueError(f"TrackStitcher with an association score needs embeddings [{probs.shape[0]}, d], "
                             f"got {got}")
        assigned: list[int | None] = [None] * probs.shape[0]
        if overlap and probs.shape[0]:
            prev_ids = sorted({k for f in range(start, start + overlap) for k in self.logits.keys_at(f)})
            if prev_ids:
                prev = torch.stack([self._overlap_masks(tid, start, overlap, logits) for tid in prev_ids])
                if self.association is None:
                    pairs = match_by_iou(prev, logits[:, :overlap] > 0, self.iou_threshold)
                else:
                    assert embeddings is not None
                    prev_emb = torch.stack([self._embedding(tid) for tid in prev_ids]).to(embeddings)
                    scores = self.association(prev, prev_emb, logits[:, :overlap], embeddings)
                    pairs = match_by_score(scores, self.association_threshold)
                for p, q in pairs:
                    assigned[q] = prev_ids[p]
        ids: list[int] = []
        for q, tid in enumerate(assigned):
            if tid is None:
                tid = self._next_id
                self._next_id += 1
                self.tracks[tid] = StitchedTrack(tid, self.num_frames)
            trk = self.tracks[tid]
            trk.prob_sum = probs[q].float().clone() if trk.prob_sum is None else trk.prob_sum + probs[q].float()
            trk.clips += 1
            if self.association is not None:
                assert embeddings is not None
                trk.embedding = embeddings[q].detach()
            self.logits.add(start, tid, logits[q])
            ids.append(tid)
        return ids

    def _embedding(self, tid: int) -> torch.Tensor:
        emb = self.tracks[tid].embedding
        if emb is None:
            raise ValueError(f"TrackStitcher: track {tid} has no embedding (added without an association score)")
        return emb

    def _overlap_masks(self, tid: int, start: int, overlap: int, like: torch.Tensor) -> torch.Tensor:
        """bool [O, h4, w4]: the track's averaged logits > 0 on the overlap frames (False where absent)."""
        out = torch.zeros((overlap, *like.shape[-2:]), dtype=torch.bool, device=like.device)
        for i in range(overlap):
            avg = self.logits.average(start + i)
            if tid in avg:
                out[i] = avg[tid] > 0
        return out

    def finish(self, upto: int) -> None:
        """Turn every pending frame < upto into RLE masks (one batched upsampling per frame)."""
        for f, avg in self.logits.pop_finished(upto):
            tids = list(avg)
            stacked = torch.stack([avg[t] for t in tids])[:, None]  # [K, 1, h4, w4]
            masks = self.upsample(stacked)[:, 0] > 0  # [K, H, W]
            for tid, rle in zip(tids, masks_to_rles(masks)):
                self.tracks[tid].masks[f] = rle


class CompressedMaps(Sequence[np.ndarray]):
    """A sequence of same-dtype 2D maps kept zlib-compressed in memory (decoded on access): long videos'
    semantic maps cost kilobytes per frame instead of H·W·4 bytes."""

    def __init__(self, maps: Sequence[np.ndarray] = ()) -> None:
        self._blobs: list[tuple[bytes, tuple[int, ...], str]] = []
        for m in maps:
            self.append(m)

    def append(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr)
        self._blobs.append((zlib.compress(arr.tobytes(), 1), arr.shape, arr.dtype.str))

    def __len__(self) -> int:
        return len(self._blobs)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        if isinstance(i, slice):
            raise TypeError("CompressedMaps: index with an int")
        blob, shape, dtype = self._blobs[i]
        return np.frombuffer(zlib.decompress(blob), dtype=np.dtype(dtype)).reshape(shape).copy()
