"""Peak memory and speed of `vidseg.predict` on a 60-frame and a 600-frame synthetic 480p video, in one run.

    python scripts/bench_inference.py [--ckpt CKPT --task vos] [--frames 60 600] [--json out.json]

Each video is a moving disc over a textured 854x480 background (H.264 via PyAV); the prompt is its first-frame
mask. Without --ckpt a random-init tiny VOS checkpoint is built from the repo's configs (the speed of the
network does not matter for the memory question). Every predict runs in its own child process; peak RSS is
that child's own VmHWM (/proc/self/status), frames/s = frames / wall time of `predict()` inside the child (model
loading excluded, output writing included). Headline: `memory_ratio` = peak RSS at the longest ÷ at the
shortest video (goal ≤ 1.2: memory bounded by a clip, not the video). A "reference" pass decodes the whole
video into memory once (what a non-streaming pipeline holds at least), measured the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def make_video(path: Path, frames: int, height: int = 480, width: int = 854) -> Path:
    """Write the synthetic video and its first-frame prompt PNG (`<path>.png`)."""
    from fractions import Fraction

    import av

    from vidseg.data.formats.common import write_index_png

    rng = np.random.default_rng(0)
    bg = rng.integers(30, 100, size=(height, width, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:height, :width]
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(24))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "ultrafast"}
        for t in range(frames):
            cx = 80 + (t * 2) % (width - 160)
            disc = (xx - cx) ** 2 + (yy - height / 2) ** 2 <= 60**2
            rgb = bg.copy()
            rgb[disc] = (230, 200, 40)
            if t == 0:
                write_index_png(path.with_suffix(".png"), disc.astype(np.uint8))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def make_checkpoint(run_dir: Path, cache: Path) -> Path:
    """A random-init tiny VOS checkpoint laid out like a training run (checkpoints/ + .hydra/config.yaml)."""
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from vidseg.utils.run import build_datamodule, build_module

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", ["task=vos", "logger=none", f"paths.cache_dir={cache}",
                                f"paths.output_dir={run_dir}"])
    cfg.run_name = "bench"
    torch.manual_seed(0)
    dm = build_datamodule(cfg, list(cfg.tasks))
    dm.prepare_data()
    module = build_module(cfg, dm)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict()}, ckpt)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return ckpt


def child(args: argparse.Namespace) -> None:
    """Runs inside the measured process: one predict (or the whole-video decode reference)."""
    if args.child == "reference":
        from vidseg.data.video import open_frames

        reader = open_frames(Path(args.video))
        t0 = time.perf_counter()
        frames = reader.read(list(range(len(reader))))
        print(json.dumps({"seconds": time.perf_counter() - t0, "bytes": int(frames.nbytes), "peak_kib": peak_kib()}))
        return
    from hydra import compose, initialize_config_dir

    import vidseg.inference.loading as loading
    from vidseg.predict import predict

    load_seconds = []
    load_run = loading.load_run

    def timed_load_run(*a, **kw):  # model loading is excluded from frames/s
        t = time.perf_counter()
        try:
            return load_run(*a, **kw)
        finally:
            load_seconds.append(time.perf_counter() - t)

    loading.load_run = timed_load_run

    overrides = [f"ckpt={args.ckpt}", f"task={args.task}", f"video={args.video}", f"out={args.out}",
                 f"paths.cache_dir={args.cache}", f"paths.output_dir={args.out}", "progress=false",
                 f"clip_len={args.clip_len}", f"clip_overlap={args.clip_overlap}", f"device={args.device}"]
    if args.task == "vos":
        overrides.append(f"prompt={Path(args.video).with_suffix('.png')}")
    if args.short:
        overrides.append(f"short={args.short}")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("predict", overrides)
    t0 = time.perf_counter()
    predict(cfg)
    total = time.perf_counter() - t0
    print(json.dumps({"seconds": total - sum(load_seconds), "load_seconds": sum(load_seconds),
                      "peak_kib": peak_kib()}))


def peak_kib() -> int:
    """This process's peak resident set (VmHWM): unlike a parent's view of ru_maxrss it does not include
    the memory the process had before exec (fork copies the parent's RSS high-water mark)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/status has no VmHWM (Linux only)")


def measure(cmd: list[str]) -> dict:
    """Run `cmd` in a child process; its JSON line carries its own peak RSS (VmHWM, KiB)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["peak_rss_mib"] = result["peak_kib"] / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[60, 600])
    parser.add_argument("--ckpt", default=None, help="checkpoint (default: random-init tiny VOS)")
    parser.add_argument("--task", default="vos")
    parser.add_argument("--short", type=int, default=None, help="model input short side (default: checkpoint's)")
    parser.add_argument("--clip-len", type=int, default=12)
    parser.add_argument("--clip-overlap", type=int, default=6)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--video", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_inference_"))
    work.mkdir(parents=True, exist_ok=True)
    cache = Path(os.environ.get("VIDSEG_CACHE", work / "cache"))
    ckpt = Path(args.ckpt) if args.ckpt else make_checkpoint(work / "run", cache)
    rows = []
    for n in args.frames:
        video = work / f"synthetic_{n}.mp4"
        if not video.exists():
            make_video(video, n)
        base = [sys.executable, __file__, "--video", str(video), "--cache", str(cache)]
        ref = measure([*base, "--child", "reference"])
        cmd = [*base, "--child", "predict", "--ckpt", str(ckpt), "--task", args.task, "--out", str(work / f"out_{n}"),
               "--clip-len", str(args.clip_len), "--clip-overlap", str(args.clip_overlap), "--device", args.device]
        if args.short:
            cmd += ["--short", str(args.short)]
        res = measure(cmd)
        rows.append({"frames": n, "peak_rss_mib": round(res["peak_rss_mib"], 1),
                     "frames_per_s": round(n / res["seconds"], 2), "seconds": round(res["seconds"], 2),
                     "reference_whole_decode_peak_rss_mib": round(ref["peak_rss_mib"], 1),
                     "reference_decoded_mib": round(ref["bytes"] / 2**20, 1)})
        print(json.dumps(rows[-1]))
    lo, hi = min(rows, key=lambda r: r["frames"]), max(rows, key=lambda r: r["frames"])
    report = {
        "memory_ratio": round(hi["peak_rss_mib"] / lo["peak_rss_mib"], 3),
        "reference_memory_ratio": round(hi["reference_whole_decode_peak_rss_mib"]
                                        / lo["reference_whole_decode_peak_rss_mib"], 3),
        "goal": "memory_ratio <= 1.2",
        "runs": rows,
        "task": args.task, "clip_len": args.clip_len, "clip_overlap": args.clip_overlap,
        "checkpoint": str(ckpt), "resolution": "854x480",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
