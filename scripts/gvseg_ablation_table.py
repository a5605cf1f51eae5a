"""Markdown table of the GvSeg ablation multirun: one row per job (its `gvseg` choice), VPQ / STQ columns.

    python scripts/gvseg_ablation_table.py logs/gvseg_ablation/multiruns/<time> [--out table.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

ORDER = ["baseline", "spa", "init_assoc", "contrastive", "all"]
LABELS = {"baseline": "TarViS baseline", "spa": "+ SPA", "init_assoc": "+ task-oriented init & association",
          "contrastive": "+ contrastive sampling", "all": "all GvSeg components"}


def rows(sweep_dir: Path) -> list[tuple[str, float, float]]:
    out = []
    for metrics_file in sorted(sweep_dir.glob("*/metrics.json")):
        overrides = yaml.safe_load((metrics_file.parent / ".hydra" / "overrides.yaml").read_text())
        choice = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("gvseg=")), "?")
        vps = json.loads(metrics_file.read_text()).get("vps", {})
        out.append((choice, float(vps.get("VPQ", float("nan"))), float(vps.get("STQ", float("nan")))))
    if not out:
        raise SystemExit(f"{sweep_dir}: no <job>/metrics.json found (is this a multirun sweep dir?)")
    return sorted(out, key=lambda r: ORDER.index(r[0]) if r[0] in ORDER else len(ORDER))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    lines = ["| row | VPQ (0-100) | STQ (0-1) |", "|---|---|---|"]
    lines += [f"| {LABELS.get(c, c)} | {vpq:.2f} | {stq:.3f} |" for c, vpq, stq in rows(args.sweep_dir)]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
