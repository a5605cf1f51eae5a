"""Decode throughput of PyAV vs decord2 (vidseg's readers and the raw libraries) vs decord 0.6.0.

Writes a synthetic 480p mp4 (moving shapes from vidseg's generator, libx264, keyframe every --gop frames)
and measures, per backend and thread setting:
  seq fps     : all frames in order, read in chunks of 8 (inference streaming),
  clip/s warm : random 3-frame clips (sorted, within a 12-frame window) from an open reader (training),
  clip/s cold : the same with a new reader per clip (a DataLoader touching many videos),
and checks that every backend returns the same pixels as a sequential PyAV decode.

Each backend runs in its own subprocess (decord2 and decord 0.6.0 are both imported as `decord`). decord 0.6.0
is optional: install it outside the venv with `pip install --no-deps --target /tmp/decord06 decord==0.6.0`
and pass `--decord06 /tmp/decord06`.

    python scripts/bench_decode.py [--frames 300 --height 480 --width 854 --gop 30 --clips 60 --repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHUNK = 8
CLIP_LEN, CLIP_WINDOW = 3, 12


def make_video(path: Path, frames: int, height: int, width: int, gop: int) -> None:
    from fractions import Fraction

    import av

    from vidseg.data.synthetic_scene import SceneConfig, make_scene

    # render a small scene and upscale (nearest) so writing the test video stays cheap
    scene = make_scene(0, "train", 0, SceneConfig(height=height // 4, width=width // 4, num_frames=frames))
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(30))
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"crf": "23", "g": str(gop), "preset": "veryfast"}
        for f in scene.frames:
            big = np.repeat(np.repeat(f, 4, axis=0), 4, axis=1)
            big = np.pad(big, ((0, height - big.shape[0]), (0, width - big.shape[1]), (0, 0)), mode="edge")
            c.mux(s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(big), format="rgb24")))
        c.mux(s.encode(None))


def clips(num_frames: int, n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        start = int(rng.integers(0, num_frames - CLIP_WINDOW + 1))
        out.append(sorted((start + rng.choice(CLIP_WINDOW, CLIP_LEN, replace=False)).tolist()))
    return out


def worker(backend: str, threads: int, video: Path, num_clips: int) -> dict:
    """Runs in a subprocess: time one backend, return timings and a checksum of what it decoded."""
    if backend in ("pyav", "decord2"):
        from vidseg.data.video import DecordReader, PyAVReader, probe_video

        cls = PyAVReader if backend == "pyav" else DecordReader
        known = probe_video(video).num_frames  # a dataset's FrameSource knows the frame count

        def open_reader():
            return cls(video, num_frames=known, threads=threads)

        def read(r, idx):
            return r.read(idx)
    else:  # raw decord API (decord2 or decord 0.6.0, whichever `import decord` finds)
        import decord

        def open_reader():
            return decord.VideoReader(str(video), ctx=decord.cpu(0), num_threads=threads)

        def read(r, idx):
            return r.get_batch(idx).asnumpy()

    r = open_reader()
    n = len(r)
    if hasattr(r, "_ensure_open"):  # vidseg readers open lazily; open outside the timed part like the raw API
        r._ensure_open()
    t0 = time.perf_counter()
    sums = []
    for i in range(0, n, CHUNK):
        a = read(r, list(range(i, min(n, i + CHUNK))))
        sums.append(int(a[..., :3].astype(np.int64).sum()))
    seq = n / (time.perf_counter() - t0)
    sample = clips(n, num_clips)
    t0 = time.perf_counter()
    for idx in sample:
        read(r, idx)
    warm = len(sample) / (time.perf_counter() - t0)
    cold_sample = sample[: max(1, num_clips // 3)]
    t0 = time.perf_counter()
    for idx in cold_sample:
        read(open_reader(), idx)
    cold = len(cold_sample) / (time.perf_counter() - t0)
    import decord as _d  # noqa: F401  (version of whichever decord is importable, for the table)

    return {"seq_fps": seq, "clips_warm": warm, "clips_cold": cold, "checksum": sums, "frames": n,
            "decord_version": getattr(_d, "__version__", "?")}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=854)
    p.add_argument("--gop", type=int, default=30)
    p.add_argument("--clips", type=int, default=60)
    p.add_argument("--repeat", type=int, default=3, help="interleaved repeats; the best of each is shown")
    p.add_argument("--decord06", type=Path, default=Path("/tmp/decord06"), help="--target dir of decord 0.6.0")
    p.add_argument("--worker", nargs=3, metavar=("BACKEND", "THREADS", "VIDEO"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        backend, threads, video = args.worker
        print(json.dumps(worker(backend, int(threads), Path(video), args.clips)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "bench_480p.mp4"
        t0 = time.perf_counter()
        make_video(video, args.frames, args.height, args.width, args.gop)
        print(f"video: {args.width}x{args.height}, {args.frames} frames, libx264 crf 23, keyframe every "
              f"{args.gop}; written in {time.perf_counter() - t0:.1f} s; {os.cpu_count()} CPU cores")  # fmt: skip
        runs = [("pyav", "vidseg PyAVReader", None), ("decord2", "vidseg DecordReader (decord2)", None),
                ("raw", "decord2 VideoReader.get_batch", None)]  # fmt: skip
        if (args.decord06 / "decord").is_dir():
            runs.append(("raw", "decord 0.6.0 VideoReader.get_batch", str(args.decord06)))
        else:
            print(f"(decord 0.6.0 not found under {args.decord06}; skipped)")
        configs = [(b, label, extra, th) for b, label, extra in runs for th in (1, 0)]
        best: dict[int, dict] = {}
        failed: dict[int, str] = {}
        reference = None
        for _ in range(args.repeat):  # interleaved repeats, best of each: the machine may be shared
            for k, (backend, _label, extra_path, threads) in enumerate(configs):
                env = dict(os.environ)
                if extra_path:
                    env["PYTHONPATH"] = extra_path + os.pathsep + env.get("PYTHONPATH", "")
                cmd = [sys.executable, __file__, "--clips", str(args.clips), "--worker", backend, str(threads),
                       str(video)]  # fmt: skip
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    failed[k] = (proc.stderr.strip().splitlines() or ["?"])[-1]
                    continue
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                reference = reference or res["checksum"]
                res["same"] = True
                prev = best.setdefault(k, res)
                for key in ("seq_fps", "clips_warm", "clips_cold"):
                    prev[key] = max(prev[key], res[key])
                prev["same"] = prev["same"] and res["checksum"] == reference
        rows = [(label, th, best.get(k), failed.get(k, "")) for k, (_b, label, _e, th) in enumerate(configs)]
        print(f"\n{'backend':38s} {'threads':>7s} {'seq fps':>8s} {'clip/s warm':>12s} {'clip/s cold':>12s}  check")
        for label, threads, res, note in rows:
            th = "1" if threads == 1 else "auto"
            if res is None:
                print(f"{label:38s} {th:>7s}  failed: {note}")
                continue
            note = "same pixels" if res["same"] else "PIXELS DIFFER"
            print(f"{label:38s} {th:>7s} {res['seq_fps']:8.1f} {res['clips_warm']:12.1f} {res['clips_cold']:12.1f}"
                  f"  {note}")  # fmt: skip


if __name__ == "__main__":
    main()
