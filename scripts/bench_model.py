"""Benchmark a TarViS training step: time, FLOPs, peak memory and MFU against this machine's matmul peak.

    python scripts/bench_model.py                       # tiny@3x256², r50@3x256², r50@3x384x640
    python scripts/bench_model.py --configs tarvis_r50:256x256 --steps 3 --profile --json bench.json

Each configuration runs in its own subprocess so that its peak memory (max RSS on CPU, max allocated on
CUDA) is its own. A step = encode + decode of a VIS-like query set (128 instance, 1 background, 40 semantic
queries) + a loss over all L+1 mask predictions and the class logits + backward. FLOPs are counted by
``torch.utils.flop_counter.FlopCounterMode`` over one such step (matmul/conv/SDPA; elementwise ops and
``grid_sample`` are not counted, so MFU is a lower bound). The matmul peak (fp32, or bf16 with
``--precision bf16``) is measured in the same child process right before and after the timed steps with
2048³ ``torch.matmul`` calls (the best is used). Two MFUs are reported:

- ``mfu``: achieved FLOP/s per wall second ÷ wall peak (what a user sees; swings with other processes' load);
- ``mfu_best``: as ``mfu`` for the fastest timed step (the machine's capability when it is least loaded);
- ``mfu_cpu``: the same per CPU second of this process ÷ the per-CPU-second peak (robust on a shared machine,
  since descheduled time is not counted; with --threads 1 it is the single-core efficiency).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
DEFAULT_CONFIGS = ["tarvis_tiny:256x256", "tarvis_r50:256x256", "tarvis_r50:384x640"]


def matmul_peak_gflops(
    n: int = 2048, repeats: int = 5, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[float, float]:
    """Best-of-``repeats`` GFLOP/s of an n×n @ n×n matmul (2n³ FLOPs): (per wall second, per CPU second).

    The CPU-second rate divides by this process's CPU time, so it is far less sensitive to other processes
    on a shared machine than the wall rate (time spent descheduled is not counted)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.matmul(a, b)
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        torch.matmul(a, b)
        _sync(device)
        best_wall = min(best_wall, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    flop = 2 * n**3 / 1e9
    return flop / best_wall, flop / max(best_cpu, 1e-9)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _build(config: str, device: str, precision: str):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from vidseg.model.queries import LearnedQueries, QuerySet

    torch.manual_seed(0)
    cfg = OmegaConf.load(CONF / f"{config}.yaml")
    cfg.precision = precision
    model = instantiate(cfg, vocabularies={"bench": 40}, groups=["instance", "background"]).to(device)
    inst, bg = LearnedQueries(model.d_model, 128).to(device), LearnedQueries(model.d_model, 1).to(device)
    model.bench_queries = torch.nn.ModuleList([inst, bg])
    qs = QuerySet([inst.group("instance"), bg.group("background"), model.semantic_bank.group("bench")])
    return model.train(), qs


def _step(model, qs, frames: torch.Tensor) -> None:
    from vidseg.model.decoder import classify

    out = model(frames, qs)
    loss = frames.new_zeros((), dtype=torch.float32)
    for layer in range(out.num_predictions):
        g = out.groups(layer)
        loss = loss + g["instance"].mask_logits.float().sigmoid().mean()
        loss = (
            loss
            + classify(g["instance"].embeddings, g["semantic"].embeddings, g["background"].embeddings)
            .float()
            .logsumexp(-1)
            .mean()
        )
    loss.backward()
    for p in model.parameters():
        p.grad = None


def run_single(spec: str, steps: int, device: str, precision: str, profile: bool) -> dict:
    """Benchmark one ``config:HxW`` spec in this process."""
    from torch.utils.flop_counter import FlopCounterMode

    config, size = spec.split(":")
    h, w = (int(v) for v in size.split("x"))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model, qs = _build(config, device, precision)
    frames = torch.randint(0, 256, (1, 3, 3, h, w), dtype=torch.uint8, device=device)
    _step(model, qs, frames)  # warm-up (allocator, SDPA/oneDNN kernels)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    peak_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    peaks = [matmul_peak_gflops(device=device, dtype=peak_dtype)]
    times, cpu_times = [], []
    for _ in range(steps):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        _step(model, qs, frames)
        _sync(device)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    peaks.append(matmul_peak_gflops(device=device, dtype=peak_dtype))
    step_s, cpu_s = statistics.median(times), statistics.median(cpu_times)
    with FlopCounterMode(display=False) as counter:
        _step(model, qs, frames)
    flops = counter.get_total_flops()
    if device.startswith("cuda"):
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0
    peak_wall, peak_cpu = max(p[0] for p in peaks), max(p[1] for p in peaks)
    gflops = flops / 1e9
    result = {
        "mfu": gflops / step_s / peak_wall,
        "mfu_best": gflops / min(times) / peak_wall,
        "step_s": step_s,
        "gflops": gflops,
        "peak_mb": peak_mb,
        "mfu_cpu": gflops / cpu_s / peak_cpu,
        "step_cpu_s": cpu_s,
        "matmul_peak_gflops": peak_wall,
        "matmul_peak_gflops_per_cpu_s": peak_cpu,
        "steps_s": times,
        "steps_cpu_s": cpu_times,
        "threads": torch.get_num_threads(),
        "precision": precision,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
        with torch_profile(activities=acts) as prof:
            _step(model, qs, frames)
        sort = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
        result["profile"] = prof.key_averages().table(sort_by=sort, row_limit=10, max_name_column_width=45)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="config:HxW, clip of 3 frames")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per config (median reported)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32", choices=["32", "bf16"])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="print a profiler top-10 by self time")
    parser.add_argument(
        "--json", type=Path, default=None, help="write {config: {mfu, step_s, gflops, peak_mb}}"
    )
    parser.add_argument("--single", default=None, help=argparse.SUPPRESS)  # child-process mode
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.single:
        res = run_single(args.single, args.steps, args.device, args.precision, args.profile)
        print("@@RESULT@@" + json.dumps(res))
        return

    print(
        f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__} "
        f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f} precision={args.precision}"
    )
    summary: dict[str, dict] = {}
    for spec in args.configs:
        cmd = [
            sys.executable,
            __file__,
            "--single",
            spec,
            "--steps",
            str(args.steps),
            "--device",
            args.device,
            "--precision",
            args.precision,
        ]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.profile:
            cmd.append("--profile")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT@@")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"benchmark of {spec} failed:\n{proc.stderr[-4000:]}")
        res = json.loads(lines[-1][len("@@RESULT@@") :])
        summary[spec] = {k: v for k, v in res.items() if k != "profile"}
        print(
            f"{spec:20s} {res['params_m']:5.1f}M params {res['gflops']:7.1f} GFLOP/step | wall: step "
            f"{res['step_s']:6.2f} s, peak {res['matmul_peak_gflops']:5.1f} GFLOP/s, MFU {100 * res['mfu']:5.1f}% | "
            f"CPU time: step {res['step_cpu_s']:6.2f} s, peak {res['matmul_peak_gflops_per_cpu_s']:5.1f}, "
            f"MFU {100 * res['mfu_cpu']:5.1f}% | best-step wall MFU {100 * res['mfu_best']:5.1f}% | "
            f"peak mem {res['peak_mb']:6.0f} MB | load {os.getloadavg()[0]:.1f}"
        )
        print(
            f"    steps (wall s) {[round(t, 2) for t in res['steps_s']]}  "
            f"(CPU s) {[round(t, 2) for t in res['steps_cpu_s']]}"
        )
        if args.profile:
            print(res["profile"])
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
