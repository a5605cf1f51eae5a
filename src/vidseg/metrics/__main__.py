"""Command-line evaluator: ``python -m vidseg.metrics BENCHMARK GT PRED [--split S] [--option K=V ...]``.

Reads the ground truth through our readers (``get_format(fmt).read(root, split, **options)``) and the
predictions through ``read_results(PRED, dataset)``, then prints ONE JSON object with the official keys and
scales (``--all`` adds every key the metrics compute: per window, per sequence, per class group).

How GT maps to (root, split, options) - the GT argument is what the official toolkit is given:

=============== ====================================================== ==================================
benchmark       GT                                                     PRED
=============== ====================================================== ==================================
ytvis, ovis     the annotation JSON (``ann_file``; root = its folder)   results JSON (or its folder)
davis           the DAVIS root (ImageSets/, Annotations/, JPEGImages/)  folder ``<seq>/<frame>.png``
kitti-step      the dataset root (``panoptic_maps/<split>``) or the     folder ``<seq>/<frame>.png``
                ``panoptic_maps/<split>`` folder itself (split = name)
cityscapes-vps  the root or ``panoptic_gt_<split>_city_vps.json``       folder with pred.json + pan_pred/
vipseg          the root (raw or converted) or                          folder with pred.json + pan_pred/
                ``panoptic_gt_VIPSeg_<split>.json``
vspw            the VSPW_480p root (data/, <split>.txt)                 folder ``<video>/<frame>.png``
burst           ``<root>/<split>/all_classes.json`` (or any annotation  results JSON
                JSON there; root and split from its path) or the root
=============== ====================================================== ==================================

``--split`` overrides the split (default: from the GT path where it names one, else ``val``);
``--option key=value`` (repeatable, value parsed as JSON when it can be) goes to the reader. Outputs:
ytvis/ovis AP, AP50, AP75, AP_s, AP_m, AP_l, AR1, AR10, AR100 (0-1); davis J&F-Mean, J-Mean, J-Recall,
J-Decay, F-Mean, F-Recall, F-Decay (0-1); kitti-step STQ, AQ, SQ_IoU (0-1); cityscapes-vps VPQ, VPQ_thing,
VPQ_stuff (0-100); vipseg VPQ, VPQ_thing, VPQ_stuff (0-100) and STQ (0-1); vspw mIoU, mVC_8, mVC_16 (0-1);
burst HOTA, DetA, AssA (0-100, all classes). Bad input exits with status 2 and a message naming the file
and field (the readers' errors).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vidseg.data.records import DatasetRecord, VideoPrediction, VidsegDataError


@dataclass(frozen=True)
class Benchmark:
    """How one benchmark is read and scored."""

    fmt: str
    metrics: tuple[tuple[str, dict[str, Any]], ...]  # (metric module, from_records kwargs)
    keys: tuple[str, ...]
    reader_options: dict[str, Any] = field(default_factory=dict)


BENCHMARKS: dict[str, Benchmark] = {
    "ytvis": Benchmark("ytvis", (("ytvis_ap", {}),),
                       ("AP", "AP50", "AP75", "AP_s", "AP_m", "AP_l", "AR1", "AR10", "AR100"),
                       {"check_frames": False}),
    "ovis": Benchmark("ytvis", (("ytvis_ap", {}),),
                      ("AP", "AP50", "AP75", "AP_s", "AP_m", "AP_l", "AR1", "AR10", "AR100"),
                      {"check_frames": False, "name": "ovis"}),
    "davis": Benchmark("davis", (("jf", {}),),
                       ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")),
    "kitti-step": Benchmark("kitti_step", (("stq", {"variant": "kitti"}),), ("STQ", "AQ", "SQ_IoU")),
    "cityscapes-vps": Benchmark("cityscapes_vps", (("vpq", {"windows": (1, 2, 3, 4)}),),
                                ("VPQ", "VPQ_thing", "VPQ_stuff")),
    "vipseg": Benchmark("vipseg", (("vpq", {"windows": (1, 2, 4, 6, 8)}), ("stq", {"variant": "vipseg"})),
                        ("VPQ", "VPQ_thing", "VPQ_stuff", "STQ")),
    "vspw": Benchmark("vspw", (("miou", {"vc_windows": (8, 16)}),), ("mIoU", "mVC_8", "mVC_16")),
    "burst": Benchmark("burst", (("hota", {}),), ("HOTA", "DetA", "AssA"), {"check_frames": False}),
}  # fmt: skip


def _parse_option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--option expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def gt_location(benchmark: str, gt: Path, split: str | None) -> tuple[Path, str, dict[str, Any]]:
    """(root, split, reader options) of a GT path, per the table in the module docstring."""
    options: dict[str, Any] = {}
    if benchmark in ("ytvis", "ovis") and gt.suffix == ".json":
        return gt.parent, split or "val", {"ann_file": gt.resolve()}
    if benchmark == "burst" and gt.suffix == ".json":
        return gt.parent.parent, split or gt.parent.name, {"ann_file": gt.resolve()}
    if benchmark == "kitti-step" and gt.parent.name == "panoptic_maps":
        return gt.parent.parent, split or gt.name, options
    if benchmark == "cityscapes-vps" and gt.suffix == ".json":
        m = re.fullmatch(r"panoptic_gt_(\w+)_city_vps\.json", gt.name)
        if m is None:
            raise VidsegDataError(f"{gt}: expected a file named panoptic_gt_<split>_city_vps.json")
        return gt.parent, split or m.group(1), options
    if benchmark == "vipseg" and gt.suffix == ".json":
        m = re.fullmatch(r"panoptic_gt_VIPSeg_(\w+)\.json", gt.name)
        if m is None:
            raise VidsegDataError(f"{gt}: expected a file named panoptic_gt_VIPSeg_<split>.json")
        return gt.parent, split or m.group(1), {"layout": "converted"}
    return gt, split or "val", options


def evaluate(
    benchmark: str, gt: Path, pred: Path, split: str | None = None, options: dict[str, Any] | None = None,
    all_keys: bool = False,
) -> dict[str, float]:
    """Read GT and predictions of `benchmark` and return the official metrics (all computed keys when
    `all_keys`)."""
    from vidseg.data.formats import get_format

    bench = BENCHMARKS[benchmark]
    if not gt.exists():
        raise FileNotFoundError(f"{gt}: ground truth path does not exist")
    if not pred.exists():
        raise FileNotFoundError(f"{pred}: prediction path does not exist")
    root, split_name, path_options = gt_location(benchmark, gt, split)
    fmt = get_format(bench.fmt)
    dataset: DatasetRecord = fmt.read(root, split_name, **(bench.reader_options | path_options | (options or {})))
    preds: list[VideoPrediction] = fmt.read_results(pred, dataset)
    out: dict[str, float] = {}
    for module_name, kwargs in bench.metrics:
        module = importlib.import_module(f"vidseg.metrics.{module_name}")
        from_records: Callable[..., dict[str, float]] = module.from_records
        values = from_records(dataset, preds, **kwargs)
        for key, value in values.items():
            out.setdefault(key, value)  # vipseg: VPQ's keys first, then STQ's
    return out if all_keys else {k: out[k] for k in bench.keys}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vidseg.metrics",
        description="Evaluate official-format predictions against official-format ground truth.",
    )
    parser.add_argument("benchmark", choices=sorted(BENCHMARKS))
    parser.add_argument("gt", type=Path, help="ground truth: annotation JSON or dataset folder (see docs)")
    parser.add_argument("pred", type=Path, help="predictions: results JSON or folder, official layout")
    parser.add_argument("--split", default=None, help="split name (default: from the GT path, else 'val')")
    parser.add_argument("--option", action="append", type=_parse_option, default=[],
                        help="reader option KEY=VALUE (repeatable)")
    parser.add_argument("--all", action="store_true", help="print every computed key, not only the official")
    args = parser.parse_args(argv)
    try:
        result = evaluate(args.benchmark, args.gt, args.pred, args.split, dict(args.option), args.all)
    except (VidsegDataError, FileNotFoundError, TypeError, KeyError, ValueError) as e:
        print(f"error: {args.benchmark}: {e}", file=sys.stderr)
        return 2
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.items()}
    print(json.dumps(clean))
    return 0


if __name__ == "__main__":
    sys.exit(main())
