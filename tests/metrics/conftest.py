"""The metric tests share their independent references with scripts/bench_metrics.py: put scripts/ on the
import path (`_dense_references`, `_metric_references`)."""

from __future__ import annotations

import sys
from pathlib import Path

_SCRIPTS = str(Path(__file__).resolve().parents[2] / "scripts")
if _SCRIPTS not in sys.path:
    sys.path.insert(0, _SCRIPTS)
