"""Shared fixtures. Nothing downloads: hub offline, W&B disabled unless a test asks for offline."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "VIDSEG_SCAN_CACHE" not in os.environ:  # label-file scan caches of this test process, not in ~/.cache
    os.environ["VIDSEG_SCAN_CACHE"] = _SCANS = tempfile.mkdtemp(prefix="vidseg-test-scans-")
    atexit.register(shutil.rmtree, _SCANS, True)
