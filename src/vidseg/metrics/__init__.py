"""Official video-segmentation metrics as `torchmetrics.Metric` subclasses with one API.

Every metric: ``Metric(categories, ...)``; ``update(pred: VideoPrediction, gt: VideoRecord)`` for one video;
``compute() -> dict[str, float]`` with the official names and scales; bounded memory (per-class / per-
sequence sums) and DDP sync through sum/cat reductions. Each module also has
``from_records(gt: DatasetRecord, preds: list[VideoPrediction], **kw) -> dict``.

- `VPQ` (vpq.py): Cityscapes-VPS / VIPSeg video panoptic quality, 0-100.
- `STQ` (stq.py): KITTI-STEP / VIPSeg segmentation and tracking quality, 0-1.
- `SemanticMIoU` (miou.py): VSPW mIoU and video consistency, 0-1.
- `YTVISMeanAP` (ytvis_ap.py), `DavisJF` (jf.py), `BurstHOTA` (hota.py).

Names are imported lazily so that ``import vidseg.metrics`` stays cheap and one metric's module does not
need the others. ``python -m vidseg.metrics BENCHMARK GT PRED`` is the command-line evaluator.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "VPQ": "vidseg.metrics.vpq",
    "STQ": "vidseg.metrics.stq",
    "SemanticMIoU": "vidseg.metrics.miou",
    "YTVISMeanAP": "vidseg.metrics.ytvis_ap",
    "DavisJF": "vidseg.metrics.jf",
    "BurstHOTA": "vidseg.metrics.hota",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vidseg.metrics' has no attribute {name!r}")
