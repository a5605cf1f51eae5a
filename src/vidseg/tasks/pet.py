"""PET — point-exemplar-guided tracking (TarViS §7 PET): one query per object from its point.

The point query is initialised from the point's features on the four neck outputs (F32, F16, F8, F4) through
an MLP; its object-encoder tokens are the same four features, each through its own projection, placed at the
point's 2D sine position. It shares the object encoder, the 16 background queries and the decoder groups with
VOS (`tasks/vos.py`): PET is VOS with every object given as a point. Training point = distance-transform peak
of the reference mask (computed by the clip dataset). Scored with J&F on mask data, HOTA on BURST.
"""

from __future__ import annotations

from typing import Any

from vidseg.data.records import DatasetRecord
from vidseg.tasks.vos import VOSTask


class PETTask(VOSTask):
    """Every object is a point object at inference; in training with probability `point_prob` (default 1: all;
    below 1 the rest are prompted with their masks, as VOS objects, sharing the object encoder and decoder)."""

    name = "pet"

    def __init__(self, point_prob: float = 1.0, **vos_kwargs: Any) -> None:
        if point_prob <= 0.0:  # VOSTask checks the upper bound
            raise ValueError(f"tasks.pet.point_prob must be in (0, 1], got {point_prob}")
        super().__init__(point_prob=point_prob, **vos_kwargs)

    def eval_point_objects(self, prompts: list) -> list[bool]:
        """Every object is a point object (mask-only prompts get their mask's distance-transform peak)."""
        return [True] * len(prompts)

    def make_metric(self, dataset: DatasetRecord) -> Any:
        if dataset.format == "burst":
            from vidseg.metrics.hota import BurstHOTA

            return BurstHOTA(categories=dataset.categories)
        return super().make_metric(dataset)
