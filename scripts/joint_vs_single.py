"""Joint vs single-task training (by hand, not CI; ~30 CPU-minutes with the default budgets).

Trains (or reads) one single-task run per task with the default recipe (`python -m vidseg.train task=T`), then
`task=multi` for the sum of the single-task step budgets, and prints per task the joint score next to the single
score and their ratio (goal: joint ≥ 90 % of single on every task). A markdown table goes to OUT/table.md.

    python scripts/joint_vs_single.py --out logs/joint_vs_single                  # full comparison
    python scripts/joint_vs_single.py --out /tmp/jvs --steps 2 -x data.max_val_videos=1 -x data.batch_size=1
    python scripts/joint_vs_single.py --out DIR --single vis=logs/vis/runs/<time>  # reuse a finished run

A task's single run is reused when OUT/single_<task>/metrics.json exists (or --single points at a run dir).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from hydra import compose, initialize_config_dir

from vidseg.utils.launch import read_metrics, run_train

CONF = Path(__file__).resolve().parents[1] / "conf"
METRIC = {"vis": "AP", "vss": "mIoU", "vps": "VPQ", "vos": "J&F-Mean", "pet": "J&F-Mean"}


def default_steps(task: str, extra: list[str]) -> int:
    """trainer.max_steps of `python -m vidseg.train task=<task>` with the extra overrides."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"task={task}", "run_name=x", "paths.output_dir=/tmp", *extra])
    return int(cfg.trainer.max_steps)


def single_run(task: str, out: Path, steps: int | None, extra: list[str], given: Path | None) -> Path:
    """Run dir of the task's single-task run (trained here unless it exists already)."""
    run_dir = given or out / f"single_{task}"
    if not (run_dir / "metrics.json").is_file():
        budget = [f"trainer.max_steps={steps}"] if steps else []
        print(f"training task={task} -> {run_dir}", flush=True)
        run_train([f"task={task}", f"hydra.run.dir={run_dir}", "logger=csv", "print_config=false", *budget, *extra],
                  timeout=24 * 3600, log=out / f"single_{task}.log")
    return run_dir


def table(rows: list[tuple[str, str, float, float]]) -> str:
    lines = ["| task | metric | single | joint | joint / single |", "|---|---|---|---|---|"]
    for task, metric, single, joint in rows:
        ratio = joint / single if single and math.isfinite(single) else float("nan")
        flag = "" if not math.isfinite(ratio) else (" ✓" if ratio >= 0.9 else " ✗")
        lines.append(f"| {task} | {metric} | {single:.4g} | {joint:.4g} | {ratio:.2f}{flag} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs, logs and table.md")
    parser.add_argument("--tasks", default=",".join(METRIC),
                        help="rows to report (single runs to train/read), subset of " + ",".join(METRIC))
    parser.add_argument("--steps", type=int, default=None, help="single-task step budget (default: the config's)")
    parser.add_argument("--single", action="append", default=[], metavar="TASK=RUN_DIR",
                        help="use this finished single-task run instead of training one")
    parser.add_argument("-x", "--extra", action="append", default=[], metavar="OVERRIDE",
                        help="Hydra override added to every run (e.g. data.max_val_videos=2)")
    args = parser.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = set(tasks) - set(METRIC)
    if unknown:
        parser.error(f"unknown tasks {sorted(unknown)}; choose from {sorted(METRIC)}")
    given = dict(s.split("=", 1) for s in args.single)
    args.out.mkdir(parents=True, exist_ok=True)

    singles = {t: read_metrics(single_run(t, args.out, args.steps, args.extra,
                                          Path(given[t]) if t in given else None)) for t in tasks}
    # task=multi always trains all five tasks: its budget is the sum over all five single-task step budgets (no
    # wall-clock cap: the recipe's 5-minute max_time is a per-task budget, the joint run gets their sum in steps)
    budget = sum(args.steps or default_steps(t, args.extra) for t in METRIC)
    joint_dir = args.out / "joint"
    if not (joint_dir / "metrics.json").is_file():
        print(f"training task=multi for {budget} steps -> {joint_dir}", flush=True)
        run_train(["task=multi", f"hydra.run.dir={joint_dir}", f"trainer.max_steps={budget}",
                   "trainer.max_time=null", "logger=csv",
                   "print_config=false", *args.extra], timeout=48 * 3600, log=args.out / "joint.log")
    joint = read_metrics(joint_dir)
    rows = [(t, METRIC[t], float(singles[t][t][METRIC[t]]), float(joint[t][METRIC[t]])) for t in tasks]
    text = table(rows)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
