"""VSPW video semantic segmentation metrics (`VSPW-dataset/VSPW_code`, reference/formats.md §7): mIoU and
video consistency VC_n.

- mIoU: one C x C confusion matrix over every annotated frame of every video (GT void - VSPW's 0 and 255,
  mapped to IGNORE_LABEL by the reader - is skipped); ``IoU_c = TP / (TP + FP + FN)``; the mean runs over the
  classes present in the GT (row sum > 0) only, predicted-but-absent classes are excluded.
- VC_n (n = 8, 16): for each video and each start i in [0, T - n) (the last possible window is skipped, as
  in the official `get_common`), C = pixels whose GT label is the same in annotated frames i..i+n-1 and
  P = pixels whose prediction is the same there; the window scores |C & P| / |C| (NaN when |C| = 0);
  VC_n = mean over all non-NaN windows of all videos. mVC_n in the output is that mean.

Memory is bounded: VC is computed while streaming the frames (per pixel, the last frame where the GT / the
prediction changed), so a video is never held in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

from vidseg.data.records import AnnotationFormatError, Category, DatasetRecord, VideoPrediction, VideoRecord
from vidseg.metrics._common import pair_videos
from vidseg.metrics._dense import Vocabulary, scored_frames, tensor

VSPW_VC_WINDOWS = (8, 16)


class SemanticMIoU(Metric):
    """VSPW mIoU (0-1) over classes present in the GT, plus mVC_<n> for n in `vc_windows` (0-1).
    Predictions are `VideoPrediction.semantic_maps` holding category ids of the vocabulary (no void)."""

    full_state_update = False
    higher_is_better = True

    def __init__(
        self, categories: Sequence[Category], vc_windows: Sequence[int] = VSPW_VC_WINDOWS, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if any(int(n) < 2 for n in vc_windows):
            raise ValueError(f"VC windows must have at least 2 frames, got {list(vc_windows)}")
        self.vocab = Vocabulary(categories)
        self.vc_windows = tuple(int(n) for n in vc_windows)
        c = self.vocab.num_classes
        self.add_state("confusion", torch.zeros((c, c), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("vc_sum", torch.zeros(len(self.vc_windows), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("vc_count", torch.zeros(len(self.vc_windows), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, pred: VideoPrediction, gt: VideoRecord) -> None:  # type: ignore[override]
        """Score the annotated frames of one video."""
        c = self.vocab.num_classes
        confusion = np.zeros(c * c + 1, dtype=np.int64)
        vc_sum = np.zeros(len(self.vc_windows), np.float64)
        vc_count = np.zeros(len(self.vc_windows), np.int64)
        num_frames = len(gt.annotations)
        prev_g = prev_p = last_g = last_p = None
        for t, (frame, labels, sem, _) in enumerate(scored_frames(pred, gt, "semantic")):
            where = f"video {gt.video_id!r} frame {gt.frames.names[frame]!r}"
            if labels.semantic is None:
                raise AnnotationFormatError(f"{where}: GT has no semantic map")
            g = self.vocab.index(labels.semantic, f"{where} (GT)")
            if labels.void is not None:
                g[labels.void] = self.vocab.void
            p = self.vocab.index(sem, f"{where} (prediction)", allow_void=False)
            cell = np.multiply(g, c, dtype=np.int32)
            cell += p
            cell[g == self.vocab.void] = c * c  # void GT: the extra bin, dropped
            confusion += np.bincount(cell.ravel(), minlength=c * c + 1)
            if not self.vc_windows or num_frames <= min(self.vc_windows):
                continue
            if t == 0:
                last_g = np.zeros(g.shape, np.int16 if num_frames < 2**15 else np.int32)
                last_p = np.zeros(g.shape, last_g.dtype)
            else:
                last_g[g != prev_g] = t
                last_p[p != prev_p] = t
            prev_g, prev_p = g, p
            if t > num_frames - 2:
                continue  # the official loop has no window ending at the last annotated frame
            for w, n in enumerate(self.vc_windows):
                start = t - n + 1  # the window is start..t
                if start < 0:
                    continue
                common_g = last_g <= start
                n_common = int(np.count_nonzero(common_g))
                if n_common:  # 0/0 is NaN in the official code, and nanmean skips it
                    vc_sum[w] += np.count_nonzero(common_g & (last_p <= start)) / n_common
                    vc_count[w] += 1
        self.confusion += tensor(confusion[: c * c].reshape(c, c), self.confusion)
        self.vc_sum += tensor(vc_sum, self.vc_sum)
        self.vc_count += tensor(vc_count, self.vc_count)

    def compute(self) -> dict[str, float]:
        conf = self.confusion.cpu().numpy().astype(np.float64)
        tp = np.diag(conf)
        in_gt = conf.sum(axis=1) > 0
        union = conf.sum(axis=1) + conf.sum(axis=0) - tp
        miou = float(np.mean(tp[in_gt] / union[in_gt])) if in_gt.any() else float("nan")
        out = {"mIoU": miou}
        vc_sum, vc_count = self.vc_sum.cpu().numpy(), self.vc_count.cpu().numpy()
        for w, n in enumerate(self.vc_windows):
            out[f"mVC_{n}"] = float(vc_sum[w] / vc_count[w]) if vc_count[w] else float("nan")
        return out


def from_records(
    gt: DatasetRecord, preds: list[VideoPrediction], *, vc_windows: Sequence[int] = VSPW_VC_WINDOWS, **kw: Any
) -> dict[str, float]:
    """mIoU (and mVC_n) of a whole split; a GT video without prediction is an error."""
    metric = SemanticMIoU(gt.categories, vc_windows=vc_windows, **kw)
    for video, pred in pair_videos(gt, preds):
        metric.update(pred, video)
    return metric.compute()
