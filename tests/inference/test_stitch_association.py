"""Cross-clip track association by GvSeg S = cos(q + H) (SPA switch) next to the TarViS IoU association: H
decides between identical queries at different places, q between identical masks, and without the switch the
stitching is the IoU stitching it was."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests.inference._tiny import build_tiny, moving_disc_frames

from vidseg.data.records import FrameSource, VideoRecord
from vidseg.inference.stitch import TrackStitcher, make_upsampler, match_by_score
from vidseg.inference.stream import TensorFrames, as_video_frames, stream_clips
from vidseg.tasks.gvseg import ShapePositionEncoder, association_embedding, spa_association
from vidseg.tasks.gvseg_descriptor import descriptor_dim, shape_position_descriptor

U, V, M = 8, 3, 64
D = descriptor_dim(U, V)  # 26


def identity_encoder(scale: float = 1.0) -> ShapePositionEncoder:
    """Encoder whose MLP maps the raw descriptor x to [scale·x, 0] (d_model = 2D): Linear [I; -I], ReLU,
    Linear [[I, -I], [0, 0]], so projected H can be checked against the raw descriptor."""
    enc = ShapePositionEncoder(2 * D, U, V, M)
    eye = torch.eye(D)
    with torch.no_grad():
        enc.proj[0].weight.copy_(torch.cat([eye, -eye]))
        enc.proj[0].bias.zero_()
        enc.proj[2].weight.zero_()
        enc.proj[2].weight[:D].copy_(scale * torch.cat([eye, -eye], dim=1))
        enc.proj[2].bias.zero_()
    return enc


def disc_logits(t: int, cx: float, cy: float = 12.0, r: float = 5.0, h: int = 24, w: int = 48) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    return torch.where(inside, 4.0, -4.0).expand(t, h, w).clone()


def q_only(track_masks, track_emb, query_masks, query_emb) -> torch.Tensor:
    """Association by the query embeddings alone (what SPA adds H to)."""
    return F.normalize(track_emb, dim=-1) @ F.normalize(query_emb, dim=-1).T


def _two_clips(stitcher: TrackStitcher, q: torch.Tensor) -> list[int]:
    """Clip 1 (frames 0-3): A at the left, B at the right; clip 2 (frames 2-5): the same two discs in the
    opposite query order. Both queries of both clips carry the embedding q. Returns clip 2's track ids."""
    left, right = disc_logits(4, 10.0), disc_logits(4, 36.0)
    probs = torch.tensor([[0.1, 0.9], [0.1, 0.9]])
    assert stitcher.add_clip(0, 0, probs, torch.stack([left, right]), torch.stack([q, q])) == [1, 2]
    return stitcher.add_clip(2, 2, probs, torch.stack([right, left]), torch.stack([q, q]))


def test_identical_queries_at_different_places_are_linked_only_with_h() -> None:
    q = torch.linspace(-1.0, 1.0, 2 * D)
    with_h = TrackStitcher(6, lambda x: x, association=spa_association(identity_encoder()), association_threshold=0.5)
    assert _two_clips(with_h, q) == [2, 1]  # B continues track 2, A track 1
    without_h = TrackStitcher(6, lambda x: x, association=q_only, association_threshold=0.5)
    assert _two_clips(without_h, q) == [1, 2]  # every score ties: the ids follow the query order, wrongly


def test_identical_masks_are_linked_by_their_queries() -> None:
    """Two tracks with the same mask (H equal) and different q: the association follows q."""
    enc = identity_encoder()
    stitcher = TrackStitcher(6, lambda x: x, association=spa_association(enc), association_threshold=0.0)
    disc = disc_logits(4, 20.0)
    qa, qb = torch.zeros(2 * D), torch.zeros(2 * D)
    qa[-1], qb[-2] = 3.0, 3.0  # orthogonal, in the coordinates H does not use
    probs = torch.tensor([[0.1, 0.9], [0.1, 0.9]])
    stitcher.add_clip(0, 0, probs, torch.stack([disc, disc]), torch.stack([qa, qb]))
    assert stitcher.add_clip(2, 2, probs, torch.stack([disc, disc]), torch.stack([qb, qa])) == [2, 1]
    assert torch.equal(stitcher.tracks[1].embedding, qa)  # a track keeps its latest query embedding


def test_spa_association_scores_equal_an_independent_reference() -> None:
    enc = identity_encoder(scale=2.0)
    masks = torch.stack([disc_logits(2, 10.0), disc_logits(2, 30.0, r=7.0), disc_logits(2, 38.0, cy=6.0)])
    g = torch.Generator().manual_seed(0)
    emb_t, emb_q = torch.randn(3, 2 * D, generator=g), torch.randn(3, 2 * D, generator=g)
    got = spa_association(enc)(masks[:2] > 0, emb_t[:2], masks, emb_q)
    raw = shape_position_descriptor(masks > 0, U, V, M, outside_value=-1.0 / (2 * D) ** 0.5)  # [3, D]
    h = torch.cat([2.0 * raw, torch.zeros_like(raw)], dim=1)
    a, b = F.normalize(emb_t[:2] + h[:2], dim=-1), F.normalize(emb_q + h, dim=-1)
    assert got.shape == (2, 3)
    assert torch.allclose(got, a @ b.T, atol=1e-6)
    assert torch.allclose(association_embedding(emb_q, h), b, atol=1e-6)


def test_association_threshold_and_errors() -> None:
    q = torch.ones(2 * D)
    st = TrackStitcher(6, lambda x: x, association=q_only, association_threshold=0.99)
    st.add_clip(0, 0, torch.tensor([[0.0, 1.0]]), disc_logits(4, 10.0)[None], q[None])
    assert st.add_clip(2, 2, torch.tensor([[0.0, 1.0]]), disc_logits(4, 10.0)[None], -q[None]) == [2]  # cos −1
    with pytest.raises(ValueError, match="needs embeddings"):
        st.add_clip(4, 2, torch.tensor([[0.0, 1.0]]), disc_logits(4, 10.0)[None])
    assert match_by_score(torch.tensor([[0.2, 0.9], [0.8, 0.1]]), 0.5) == [(0, 1), (1, 0)]
    assert match_by_score(torch.tensor([[0.2, 0.9], [0.8, 0.1]]), 0.85) == [(0, 1)]
    assert match_by_score(torch.zeros(0, 3), 0.5) == []
    with pytest.raises(ValueError, match="NaN"):
        match_by_score(torch.tensor([[float("nan")]]), 0.5)


def test_without_association_embeddings_change_nothing() -> None:
    q = torch.linspace(-1.0, 1.0, 2 * D)
    plain, given = TrackStitcher(6, lambda x: x), TrackStitcher(6, lambda x: x)
    left, right = disc_logits(4, 10.0), disc_logits(4, 36.0)
    probs = torch.tensor([[0.1, 0.9], [0.3, 0.7]])
    for st, emb in ((plain, None), (given, torch.stack([q, -q]))):
        st.add_clip(0, 0, probs, torch.stack([left, right]), emb)
        st.add_clip(2, 2, probs, torch.stack([right, left]), emb)
        st.finish(6)
    assert [t.masks for t in plain.tracks.values()] == [t.masks for t in given.tracks.values()]
    assert all(t.embedding is None for t in given.tracks.values())


def _iou_reference(task, model, frames, dataset: str) -> list:
    """The VIS stitching loop as it was before SPA association: IoU linking of the clip candidates."""
    frames = as_video_frames(frames)
    st = TrackStitcher(frames.num_frames, make_upsampler(frames.padded_hw, frames.valid_hw, frames.orig_hw),
                       task.iou_threshold)
    for clip in stream_clips(frames, task.clip_len, task.clip_overlap):
        probs, logits, _ = task.predict_clip(model, clip.frames, dataset)
        keep = task.clip_candidates(probs, dataset)
        st.add_clip(clip.start, clip.overlap, probs[keep], logits[keep])
        st.finish(clip.next_start)
    return [(t.track_id, t.masks, t.probs) for t in st.tracks.values()]


@pytest.mark.slow
@pytest.mark.parametrize("task_name", ["vis", "vps"])
def test_tiny_model_stitching_off_is_iou_and_on_uses_q_plus_h(task_name: str, tmp_path: Path, vidseg_cache: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import vidseg.tasks.vis as vis_module

    calls: list[tuple[int, int, int]] = []

    def counting(encoder):
        score = spa_association(encoder)

        def wrapped(track_masks, track_emb, query_masks, query_emb):
            calls.append((track_emb.shape[0], query_emb.shape[0], query_masks.shape[1]))
            return score(track_masks, track_emb, query_masks, query_emb)

        return wrapped

    monkeypatch.setattr(vis_module, "spa_association", counting)
    n, h, w, num_q = 20, 64, 64, 6
    pixels = torch.from_numpy(moving_disc_frames(n, h, w, radius=10, speed=1.0)).permute(0, 3, 1, 2).contiguous()
    frames = TensorFrames(pixels, (h, w), (h, w))
    record = VideoRecord("disc", FrameSource("images", names=[f"{t:05d}" for t in range(n)]), h, w)
    runs = {}
    for spa in (False, True):
        _, module, dm = build_tiny(task_name, vidseg_cache, tmp_path / str(spa),
                                   [f"+tasks.{task_name}.gvseg={{spa: {str(spa).lower()}, max_mask_size: 16}}"])
        task, model, dataset = module.tasks[task_name], module.model, next(iter(dm.specs))
        task.clip_len, task.clip_overlap = 8, 4
        task.clip_candidates = lambda probs, _dataset: torch.arange(num_q)  # random weights: first 6 queries
        stitcher, _ = task.stitch_tracks(model, frames, dataset)
        runs[spa] = [(t.track_id, t.masks, t.probs) for t in stitcher.tracks.values()]
        assert (stitcher.association is not None) == spa
        assert all((t.embedding is not None) == spa for t in stitcher.tracks.values())
        if not spa:
            reference = _iou_reference(task, model, frames, dataset)
            assert [r[:2] for r in runs[spa]] == [r[:2] for r in reference]
            assert all(torch.equal(a[2], b[2]) for a, b in zip(runs[spa], reference))
        assert task.predict_video(model, frames, record, dataset).frame_names == record.frames.names
        if spa:  # clips start at 0, 4, 8, 12 (the last is 8 frames): 3 overlaps of 4 frames, twice (predict_video)
            assert calls and all(q == num_q and o == 4 and p > 0 for p, q, o in calls) and len(calls) == 6
        else:
            assert not calls
    assert len(runs[False]) >= num_q and len(runs[True]) >= num_q
