"""Training-step time of the tiny CPU recipe (forward + loss + backward + optimizer step, no Lightning), for the
variants that the recipe's speed choices are measured against, in one run on the same batches.

- `vis`: AdamW as a loop over the parameters (`optim.fused=false`) vs torch's fused kernel (`optim.fused=auto`).
- `vos`: stride-4 masks; stride-2 masks with prompt tokens from the stride-2 features (`token_pool=1`); stride-2
  masks with tokens pooled to stride 4 (`token_pool=2`, the VOS/PET recipe).

Each variant builds the model from the composed config (same seed), warms up on 4 batches, then the median of
`--repeats` timings of `--steps` steps on one thread is reported (whole step, and the optimizer.step() call alone),
with ratios to the task's first variant. Whole-step times of separately built models vary by about ±10 % on a
shared machine; the optimizer time is the stable figure for the AdamW comparison.

    python scripts/bench_train_step.py --json bench_train_step.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir

from vidseg.utils.run import build_datamodule, build_module

CONF = str(Path(__file__).resolve().parents[1] / "conf")
STRIDE2 = ["model.backbone.strides=[2,4,8,16,32]", "model.neck.mask_stride=2"]
VARIANTS: dict[str, list[tuple[str, list[str]]]] = {
    "vis": [("adamw_loop", ["optim.fused=false"]), ("adamw_fused", ["optim.fused=auto"])],
    "vos": [("stride4", ["~recipe"]), ("stride2_token_pool1", [*STRIDE2, "tasks.vos.token_pool=1", "~recipe"]),
            ("stride2_token_pool2", [*STRIDE2, "tasks.vos.token_pool=2", "~recipe"])],
}


def step_ms(task: str, overrides: list[str], steps: int, repeats: int) -> tuple[float, float]:
    """Median (ms per training step, ms per optimizer.step() call) of the module built from `task=<task>` +
    overrides."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=[f"task={task}", "paths.output_dir=/tmp/vidseg_bench_step", *overrides])
    torch.manual_seed(0)
    dm = build_datamodule(cfg, [task])
    dm.prepare_data()
    dm.setup("fit")
    module = build_module(cfg, dm)
    opt = module.configure_optimizers()["optimizer"]
    loader = iter(dm.train_dataloader())
    batches = [next(loader).to("cpu") for _ in range(4 + steps)]  # finished as on the device (Batch.to)

    def run(batch: Any) -> float:
        losses, _ = module.forward_task(batch)
        opt.zero_grad()
        sum(losses.values()).backward()
        start = time.perf_counter()
        opt.step()
        return time.perf_counter() - start

    for b in batches[:4]:
        run(b)
    times, opt_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        opt_s = sum(run(b) for b in batches[4:])
        times.append((time.perf_counter() - start) / steps * 1000)
        opt_times.append(opt_s / steps * 1000)
    return statistics.median(times), statistics.median(opt_times)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # the tiny recipe's torch_threads
    result: dict[str, Any] = {}
    for task, variants in VARIANTS.items():
        ms = {name: step_ms(task, ov, args.steps, args.repeats) for name, ov in variants}
        ref = variants[0][0]
        (ref_step, ref_opt) = ms[ref]
        result[task] = {name: {"ms_per_step": round(v, 1), "optimizer_ms": round(o, 2),
                               "step_vs_" + ref: round(v / ref_step, 3), "optimizer_vs_" + ref: round(o / ref_opt, 3)}
                        for name, (v, o) in ms.items()}
        for name, v in result[task].items():
            print(f"{task:4s} {name:22s} step {v['ms_per_step']:7.1f} ms ({v['step_vs_' + ref]:.3f}x {ref}), "
                  f"optimizer {v['optimizer_ms']:6.2f} ms ({v['optimizer_vs_' + ref]:.3f}x)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
