"""mIoU / VC when the frames of one video take different internal paths: predicted ids as histogram lane
keys (< 64), as plain bytes (< 256) and as int32 (>= 256), with and without OpenCV, against the
official-style reference."""

from __future__ import annotations

import numpy as np
import pytest

import vidseg.metrics._dense as dense
from _dense_references import make_gt_video, make_prediction, reference_miou, reference_vc_windows
from vidseg.data.records import Category
from vidseg.metrics.miou import SemanticMIoU

IDS = [0, 1, 2, 3, 4, 5, 100, 300]


@pytest.mark.parametrize("use_cv2", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_mixed_paths_equal_reference(monkeypatch, use_cv2, seed):
    if not use_cv2:
        monkeypatch.setattr(dense, "cv2", None)
    rng = np.random.default_rng(seed)
    metric = SemanticMIoU([Category(i, f"c{i}", False) for i in IDS], vc_windows=(3, 5))
    pairs, vc3, vc5 = [], [], []
    for v in range(2):
        base = np.kron(rng.integers(0, 6, (5, 7)), np.ones((6, 6), np.int64)).astype(np.int32)
        gts, preds = [], []
        for t in range(12):
            g = base.copy()
            g[rng.random(g.shape) < 0.05] = 100
            p = np.where(rng.random(g.shape) < 0.2, rng.integers(0, 6, g.shape), g).astype(np.int32)
            kind = (t + v) % 3  # 0: lane keys, 1: an id in 64..255, 2: an id >= 256
            if kind == 1:
                p[rng.random(g.shape) < 0.03] = 100
            elif kind == 2:
                p[rng.random(g.shape) < 0.03] = 300
            if kind == 0:
                p[p == 100] = 5
            gts.append(g)
            preds.append(p)
        gt = make_gt_video(f"v{v}", gts, [np.zeros_like(g) for g in gts])
        metric.update(make_prediction(f"v{v}", preds, None, gt.frames.names), gt)
        pairs += list(zip(gts, preds))
        vc3 += reference_vc_windows(gts, preds, 3)
        vc5 += reference_vc_windows(gts, preds, 5)
    out = metric.compute()
    assert out["mIoU"] == pytest.approx(reference_miou(pairs, 301), abs=1e-12)
    assert out["mVC_3"] == pytest.approx(float(np.nanmean(vc3)), abs=1e-12)
    assert out["mVC_5"] == pytest.approx(float(np.nanmean(vc5)), abs=1e-12)
