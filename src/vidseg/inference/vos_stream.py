"""VOS/PET over overlapping clips (TarViS §9.2, without its §12 bugs).

Each clip's object queries are re-encoded: an object first prompted inside the clip uses its prompt (GT mask,
or point for PET) on its prompt frame; an object already tracked uses the previous clips' averaged prediction
on the last shared (overlap) frame where it is visible. Objects prompted on later frames (DAVIS, YouTube-VOS)
join the clip that contains their prompt; their logits before the prompt frame are −1000. An object invisible
on every shared frame is lost; with `revive_lost` its last seen mask keeps being offered on the clip's first
frame so it can come back. Clips with no object to track are skipped. Overlap logits are averaged; a frame's
labels = argmax over objects where the max logit > 0, and an object's GT mask wins on its prompt frame. With the
task's `label_with_background` (the default; TarViS leaves its background queries unused here, tarvis.md §12.3)
the logits are margins over the background logit, so a pixel takes the argmax over background and objects.
With `flip_tta` each clip's logits are the mean of the clip's and its mirror image's (test-time augmentation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vidseg.data.records import RLE, TrackPrediction, VideoPrediction, VideoRecord
from vidseg.inference.resize import masks_to_rles
from vidseg.inference.stitch import OverlapAverager, make_upsampler
from vidseg.inference.stream import VideoFrames, as_video_frames, clip_starts, stream_clips
from vidseg.model.tarvis import model_autocast

ABSENT_LOGIT = -1000.0


@dataclass
class TrackedObject:
    """One prompted object during streaming."""

    track_id: int
    prompt_frame: int
    gt_mask: np.ndarray  # bool [H, W] at the original size (zeros when the prompt has no mask)
    gt_mask4: torch.Tensor  # bool [h4, w4] on the padded stride-4 grid
    point: torch.Tensor | None  # (x, y) in [0, 1] of the padded frame
    is_point: bool
    started: bool = False
    lost: bool = False
    last_mask4: torch.Tensor | None = None
    masks: list[RLE | None] = field(default_factory=list)


def _mask_to_stride4(mask: np.ndarray, frames: VideoFrames, hw4: tuple[int, int]) -> torch.Tensor:
    """Original-size bool mask -> bool [h4, w4] on the padded grid (nearest resize, pad, area > 0.5)."""
    mt = torch.from_numpy(mask)[None, None].float()
    mt = F.interpolate(mt, size=frames.valid_hw, mode="nearest")
    (ph, pw), (vh, vw) = frames.padded_hw, frames.valid_hw
    mt = F.pad(mt, (0, pw - vw, 0, ph - vh))
    return F.interpolate(mt, size=hw4, mode="area")[0, 0] > 0.5


def _objects(task: Any, record: VideoRecord, frames: VideoFrames, hw4: tuple[int, int]) -> list[TrackedObject]:
    prompts = sorted(record.prompts, key=lambda p: p.track_id)
    if not prompts:
        raise ValueError(f"{task.name}: video {record.video_id} has no prompts (first-appearance masks or points)")
    is_point = task.eval_point_objects(prompts)
    objs = []
    for p, point_obj in zip(prompts, is_point):
        if not 0 <= p.frame < frames.num_frames:
            raise ValueError(f"{task.name}: video {record.video_id}: prompt of track {p.track_id} on frame "
                             f"{p.frame} outside its {frames.num_frames} frames")
        ann = record.annotation_at(p.frame)
        m = ann.decode().masks.get(p.track_id) if ann is not None else None
        if m is None:
            m = np.zeros(frames.orig_hw, dtype=bool)
        point = task.prompt_point(p, m, record, frames, frames.padded_hw)
        if point_obj and point is None:
            raise ValueError(f"{task.name}: video {record.video_id}: point prompt of track {p.track_id} has "
                             "no point and an empty mask")
        objs.append(TrackedObject(p.track_id, p.frame, m, _mask_to_stride4(m, frames, hw4), point, point_obj,
                                  masks=[None] * frames.num_frames))
    return objs


def _labels(avg: dict[int, torch.Tensor], objs: list[TrackedObject], frame: int, gt_key: str) -> torch.Tensor:
    """int64 label map (0 = background, k + 1 = object k) of one frame from averaged logits {k: [h, w]};
    objects whose prompt is on this frame get their GT mask (`gt_key`: 'gt_mask' or 'gt_mask4')."""
    keys = list(avg)
    stacked = torch.stack([avg[k] for k in keys])
    best, arg = stacked.max(0)
    key_of = torch.as_tensor(keys, device=arg.device) + 1
    labels = torch.where(best > 0, key_of[arg], torch.zeros_like(arg))
    for k, obj in enumerate(objs):
        if obj.prompt_frame == frame:
            gt = getattr(obj, gt_key)
            gt = torch.from_numpy(gt) if isinstance(gt, np.ndarray) else gt
            labels[labels == k + 1] = 0
            labels[gt.to(labels.device)] = k + 1
    return labels


def predict_objects(task: Any, model: Any, video: Any, record: VideoRecord) -> VideoPrediction:
    """Stream `video` through `model` in clips of task.clip_len with task.clip_overlap (see module doc)."""
    frames = as_video_frames(video)
    device = next(model.parameters()).device
    n = frames.num_frames
    stride = int(getattr(model, "mask_stride", 4))
    hw4 = (frames.padded_hw[0] // stride, frames.padded_hw[1] // stride)
    objs = _objects(task, record, frames, hw4)
    clip_len, overlap = task.clip_len, task.clip_overlap
    first = min(o.prompt_frame for o in objs)
    if clip_len is not None:
        first = min(first, max(0, n - clip_len))  # a video no longer than a clip is one clip from frame 0
    else:
        first = 0
    up = make_upsampler(frames.padded_hw, frames.valid_hw, frames.orig_hw)
    acc = OverlapAverager()
    for clip in stream_clips(frames, clip_len, overlap, starts=clip_starts(n, clip_len, overlap, first)):
        s, e = clip.start, clip.end
        chosen: list[tuple[int, torch.Tensor, int, bool]] = []  # (object, ref mask, ref frame in clip, point?)
        shared = [acc.average(f) for f in range(s, s + clip.overlap)]
        shared_labels = [_labels(a, objs, s + i, "gt_mask4") if a else None for i, a in enumerate(shared)]
        for k, obj in enumerate(objs):
            if obj.prompt_frame >= e or (obj.lost and not task.revive_lost):
                continue
            if not obj.started:
                obj.started = True
                chosen.append((k, obj.gt_mask4, obj.prompt_frame - s, obj.is_point))
                continue
            ref = next(((i, lab == k + 1) for i in reversed(range(clip.overlap))
                        if (lab := shared_labels[i]) is not None and bool((lab == k + 1).any())), None)
            if ref is not None:
                obj.lost, obj.last_mask4 = False, ref[1].cpu()
                chosen.append((k, ref[1].cpu(), ref[0], False))
            else:
                obj.lost = True
                if task.revive_lost and obj.last_mask4 is not None:
                    chosen.append((k, obj.last_mask4, 0, False))
        if chosen:
            logits = _clip_logits(task, model, clip.frames, chosen, objs, device)
            for j, (k, *_rest) in enumerate(chosen):
                before = objs[k].prompt_frame - s
                if before > 0:
                    logits[j, :before] = ABSENT_LOGIT
                acc.add(s, k, logits[j])
        for f, avg in acc.pop_finished(clip.next_start):
            _finish_frame(f, avg, objs, up)
    tracks = [TrackPrediction(o.track_id, None, 1.0, o.masks) for o in objs]
    return VideoPrediction(record.video_id, frames.orig_hw[0], frames.orig_hw[1], list(record.frames.names),
                           tracks=tracks)


def _clip_logits(task: Any, model: Any, clip_frames: torch.Tensor, chosen: list, objs: list[TrackedObject],
                 device: torch.device) -> torch.Tensor:
    """Object logits [N, t, h4, w4] of one clip for the chosen objects' reference masks / points; with
    `task.label_with_background`, each minus the clip's background logit (max over the background queries);
    with `task.flip_tta`, averaged with the pass over the mirrored clip (frames, prompt masks and points)."""
    logits = _clip_pass(task, model, clip_frames, chosen, objs, device, mirror=False)
    if getattr(task, "flip_tta", False):
        logits = (logits + _clip_pass(task, model, clip_frames, chosen, objs, device, mirror=True)) / 2
    if getattr(task, "label_with_background", False):
        # margins over the background: `max > 0` then labels a pixel with the argmax over background and objects
        return logits[1:] - logits[:1]
    return logits[1:]


def _clip_pass(task: Any, model: Any, clip_frames: torch.Tensor, chosen: list, objs: list[TrackedObject],
               device: torch.device, mirror: bool) -> torch.Tensor:
    """[1 + N, t, h4, w4] logits (background first) of one forward pass; `mirror`: over the left-right mirrored
    padded clip, mapped back (the mirror is exact on the padded grid, padding then sits on the left)."""
    frames = clip_frames.flip(-1) if mirror else clip_frames
    feats = model.encode(frames.unsqueeze(0).to(device))
    if tuple(feats.mask_features.shape[-2:]) != tuple(chosen[0][1].shape):
        raise AssertionError(f"mask features {tuple(feats.mask_features.shape[-2:])} are not on the mask grid "
                             f"{tuple(chosen[0][1].shape)} of the padded frames")
    masks = torch.stack([m for _, m, _, _ in chosen]).to(device)
    ref_frames = torch.tensor([f for _, _, f, _ in chosen], device=device)
    is_point = [p for *_, p in chosen]
    points = None
    if any(is_point):
        points = torch.stack([objs[k].point if p else torch.zeros(2) for k, _, _, p in chosen]).to(device)
        if mirror:  # (x, y) in [0, 1] of the padded frame
            points = torch.stack([1 - points[:, 0], points[:, 1]], -1)
    if mirror:
        masks = masks.flip(-1)
    with model_autocast(model, device):  # bf16 features meet the object encoder's weights under the model's autocast
        qs = task.build_queries(feats, [masks], [ref_frames], [points], is_point, task.q_eval, task.pix_eval)
    out = model.decode(feats, qs, getattr(qs, "query_adders", None))
    logits = task.object_logits(out, -1, qs.owners, len(chosen), getattr(qs, "readout", None))[0].float()
    return logits.flip(-1) if mirror else logits


def _finish_frame(f: int, avg: dict[int, torch.Tensor], objs: list[TrackedObject], up: Any) -> None:
    """Original-size labels of frame f -> one RLE per object present."""
    keys = list(avg)
    full = up(torch.stack([avg[k] for k in keys])[:, None])[:, 0]  # [K, H, W]
    labels = _labels({k: full[i] for i, k in enumerate(keys)}, objs, f, "gt_mask").cpu()
    present = torch.unique(labels).tolist()
    for k, obj in enumerate(objs):
        if k + 1 in present:
            obj.masks[f] = masks_to_rles((labels == k + 1)[None])[0]
