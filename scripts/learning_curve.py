"""Learning curve of the default tiny CPU recipe: score after 1, 2 and 5 minutes of training (by hand, not CI).

For each task, trains `python -m vidseg.train task=T` with a wall-clock cap (`--minutes`, default 5) instead of
the recipe's step budget, saving a checkpoint every `--every` steps, then evaluates (`python -m vidseg.evaluate`)
the last checkpoint written within each time mark on the synthetic val split. Time is measured from the run's
launch (the mtime of its `.hydra/config.yaml`, written before the data and model are built), so start-up counts
against the budget. A markdown table goes to OUT/curve.md and the figures to OUT/curve.json.

    python scripts/learning_curve.py --out logs/learning_curve                 # all five tasks, 1/2/5 minutes
    python scripts/learning_curve.py --out /tmp/lc --tasks vos --marks 0.5,1 --minutes 1 --every 50
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from vidseg.utils.launch import read_metrics, run_train, train_env

METRICS = {"vos": ("J&F-Mean",), "vis": ("AP", "AP50"), "vss": ("mIoU",), "vps": ("VPQ", "STQ"), "pet": ("J&F-Mean",)}


def checkpoints_by_time(run_dir: Path) -> list[tuple[float, int, Path]]:
    """(seconds since launch, step, path) of every periodic checkpoint of a run, in step order."""
    start = (run_dir / ".hydra" / "config.yaml").stat().st_mtime
    found = []
    for path in (run_dir / "checkpoints").glob("step_*.ckpt"):
        found.append((path.stat().st_mtime - start, int(path.stem.split("_")[1]), path))
    return sorted(found, key=lambda x: x[1])


def evaluate(ckpt: Path, out: Path) -> dict:
    """`python -m vidseg.evaluate ckpt=...` in a subprocess; its metrics.json."""
    cmd = [sys.executable, "-m", "vidseg.evaluate", f"ckpt={ckpt}", f"hydra.run.dir={out}", "progress=false"]
    proc = subprocess.run(cmd, env=train_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"evaluate failed for {ckpt}:\n{proc.stderr[-4000:]}")
    return read_metrics(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tasks", default=",".join(METRICS))
    parser.add_argument("--marks", default="1,2,5", help="time marks in minutes")
    parser.add_argument("--minutes", type=float, default=5.0, help="wall-clock training cap per task")
    parser.add_argument("--every", type=int, default=100, help="checkpoint every N steps")
    parser.add_argument("-x", "--extra", action="append", default=[], metavar="OVERRIDE")
    args = parser.parse_args()
    marks = [float(m) for m in args.marks.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    cap = int(args.minutes * 60)
    results: dict[str, dict] = {}
    for task in [t for t in args.tasks.split(",") if t]:
        if task not in METRICS:
            parser.error(f"unknown task {task!r}; choose from {sorted(METRICS)}")
        run_dir = args.out / task
        if not (run_dir / "metrics.json").is_file():
            print(f"training task={task} for {cap} s -> {run_dir}", flush=True)
            run_train([f"task={task}", f"hydra.run.dir={run_dir}", "logger=csv", "print_config=false",
                       "trainer.max_steps=1000000", f"trainer.max_time=00:00:{cap // 60:02d}:{cap % 60:02d}",
                       f"checkpoint.every_n_steps={args.every}", "callbacks.model_checkpoint.save_top_k=-1",
                       *args.extra], timeout=cap + 1800, log=args.out / f"{task}.log")
        ckpts = checkpoints_by_time(run_dir)
        rows = {}
        for mark in marks:
            within = [c for c in ckpts if c[0] <= mark * 60]
            if not within:
                rows[str(mark)] = None
                continue
            seconds, step, path = within[-1]
            scores = evaluate(path, args.out / f"eval_{task}_{mark:g}min")[task]
            rows[str(mark)] = {"step": step, "seconds": round(seconds, 1),
                               **{k: scores[k] for k in METRICS[task]}}
            print(task, mark, rows[str(mark)], flush=True)
        results[task] = rows
    (args.out / "curve.json").write_text(json.dumps(results, indent=2))
    lines = ["| task | metric | " + " | ".join(f"{m:g} min" for m in marks) + " |",
             "|---|---|" + "---|" * len(marks)]
    for task, rows in results.items():
        for key in METRICS[task]:
            cells = []
            for mark in marks:
                r = rows[str(mark)]
                cells.append("–" if r is None else f"{r[key]:.3f} (step {r['step']})")
            lines.append(f"| {task} | {key} | " + " | ".join(cells) + " |")
    (args.out / "curve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
