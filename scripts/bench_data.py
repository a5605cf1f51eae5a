"""Training-clip throughput of ClipDataset + DataLoader against pure frame decoding, in the same run.

Builds (once, cached) a synthetic YouTube-VIS-format dataset with 480p JPEG frames, then measures
- pure decode: the same frames of the same clips decoded by the same reader (`vidseg.data.video`: JPEGs through
  simplejpeg straight into the clip's array since session 16, torchvision's decoder in session 15, PIL before, so
  ratios are not comparable across those changes; full size), no annotations, no transforms — the reference a data
  pipeline cannot beat per process;
- ClipDataset items in this process (sampling, decode, RLE decode, targets, crop draw; with the device resize,
  the default since session 14, no frame resize, padding or mask painting: those happen in `Batch.to`, and the
  crop copy in the collate, so items' figures are not comparable with earlier sessions');
- DataLoader with num_workers 0 and 2 (3-frame clips, YouTube-VIS TarViS settings), batch size 1;
- pure decode in as many processes at once as the most workers (`pure_decode_x2`, per process): what the machine
  gives each of two decoders running together (shared caches and memory bandwidth, clock, other tenants);
- the same DataLoader over items that only spin for pure decode's CPU time per clip (`ratio_loader_floor`): the
  ratio a pipeline with no work but decoding would reach here, the DataLoader's own work and the sharing left;
- the same DataLoader over items that only decode (`ratio_loader_decode`), and that also hand their crops over
  through the slots (`ratio_loader_decode_crop`): with none of the items' other work, the ceiling of any pipeline
  that hands crops over this way;
- the same items and collate on as many threads of this process as the most workers (`ratio_threads`, per thread):
  no worker processes, pickling or shared-memory hand-over (the JPEG decoder releases the GIL), so what is left of
  the gap there is the items' own work;
- the items' CPU time outside reading their frames, timed inside the items (`non_decode_cpu_ms_per_clip_cold`),
  then again with their frames already decoded (`..._warm`): the same work with nothing between clips to evict the
  caches and branch predictors it runs on. The difference is the machine's cost of running that code cold after
  each clip's decoding.
`ratio` = (DataLoader clips/s with the most workers ÷ workers) ÷ pure-decode clips/s; `ratio_concurrent_decode` =
the same per-worker rate ÷ `pure_decode_x2`, the part of the gap that is the pipeline's rather than the machine's.
Every rate is the median over `--repeats` interleaved rounds (the machine may be shared); wall-clock rates.
Alongside, CPU time per clip (`time.process_time`; DataLoader workers: their rusage once joined) for pure decode,
items and the workers: less sensitive to other jobs on a shared machine. items − decode is the pipeline's own
non-decode work (this process fixes its heap thresholds as the workers do, unless `--no-worker-heap`, so the
reference is not slowed by fresh pages); `ratio_worker_cpu` = decode CPU ms ÷ worker CPU ms per clip is what one
worker reaches with a core to itself (its collate and the shared-memory hand-over of each batch included).

The DataLoader runs as training does: batches come back through `SlotHandover`'s reused shared-memory slots, workers
fix their heap thresholds (`WorkerMemory`), RLE targets stay run lengths until resized (`RLEClipMasks`), and each
training crop is handed over as decoded, its flip, resize and padding left to the device, with the resized RLE masks
as rectangles to paint there (`data.resize_on_device`, `vidseg.data.frame_resize`, `vidseg.data.mask_rects`);
`--no-slots`, `--no-worker-heap`, `--no-rle-masks` and `--no-device-resize` switch each off for comparison.
`--no-resize` keeps each 0.75 crop at its decoded size (no resize anywhere).

What is not measured on the CPU: the work moved to the device. `ClipTransform` draws the colour jitter per clip and
returns it as a 3×4 colour map (`ClipSample.colour`); the model applies it on the accelerator while normalising the
uint8 frames (`normalize_frames`); and `Batch.to(device)` flips, resizes and pads the crops and paints the masks
there.
`colour_on_device_ms` and `resize_on_device_ms` report what each costs when run on *this CPU* for one clip (for the
colour: normalise with the map minus normalise without), i.e. the work moved off the data workers. The per-worker
`ratio` also needs a free core per worker plus one for the consuming process; on a machine with fewer (see
`machine.load_avg_1min`), it measures the machine, not the pipeline.

    python scripts/bench_data.py --json bench_data.json
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import pstats
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from _bench_machine import machine
from _bench_moved_work import colour_on_device_ms, handover_copy_ms, resize_on_device_ms
from _bench_references import (
    minor_faults,
    non_decode_cpu,
    rate_loader_decode,
    rate_loader_floor,
    rate_pure_decode,
    rate_pure_decode_concurrent,
    rate_threads,
)
from _worker_split import WorkerSplit
from vidseg.data.clip_dataset import ClipDataset
from vidseg.data.formats import get_format
from vidseg.data.handover import SlotHandover
from vidseg.data.sampling import InstanceClipSampler
from vidseg.data.synthetic import ensure_synthetic
from vidseg.data.transforms import ClipTransform
from vidseg.data.worker_memory import WorkerMemory, fix_malloc_thresholds


def build_dataset(args: argparse.Namespace, **kw: Any) -> ClipDataset:
    root = ensure_synthetic("ytvis", args.cache, height=args.height, width=args.width,
                           videos_train=args.videos, videos_val=1, frames=args.frames)
    record = get_format("ytvis").read(root, "train")
    sampler = InstanceClipSampler(num_frames=3, factor=7.5)
    # --no-resize: the crop comes out at its decoded size (short side 0.75 x height)
    min_dims = (round(0.75 * args.height),) if args.no_resize else (448, 512)
    per_video = -(-args.clips // len(record.videos))
    transform = ClipTransform(min_dims=min_dims, max_dim=1024, crop_fraction=(0.75, 0.75),
                              resize_on_device=not args.no_device_resize)
    return ClipDataset(record, sampler, transform, task="vis", samples_per_video=per_video, seed=args.seed,
                       rle_masks=not args.no_rle_masks, **kw)


def rate_items(ds: ClipDataset, n: int) -> tuple[float, float, float]:
    """(clips/s, CPU ms per clip, minor page faults per clip) of ClipDataset items 0..n-1 in this process."""
    start, cpu, faults = time.perf_counter(), time.process_time(), minor_faults(resource.RUSAGE_SELF)
    for i in range(n):
        ds[i]
    return (n / (time.perf_counter() - start), 1000.0 * (time.process_time() - cpu) / n,
            (minor_faults(resource.RUSAGE_SELF) - faults) / n)


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rate_loader(ds: ClipDataset, n: int, workers: int, slots: bool = True, worker_heap: bool = True,
                split: WorkerSplit | None = None) -> tuple[float, float | None, float | None, float]:
    """(clips/s, worker CPU ms per clip, worker minor page faults per clip, this process's CPU ms per clip received)
    of a DataLoader over items
    0..n+workers-1. The rate is taken in steady state (worker start-up and each worker's first clip excluded); the
    worker CPU time and faults (all workers, read from the joined worker processes' rusage; None without workers)
    cover every clip they made, collate and the hand-over to this process through shared memory included; this
    process's CPU time (receiving batches) is taken in steady state like the rate. `split` (with workers): the
    workers also add up where their CPU time goes (`_worker_split`)."""
    skip = max(workers, 1)
    subset = Subset(ds, range(min(len(ds), n + skip)))
    collate = SlotHandover(ds.collate, workers, slots_per_worker=6) if workers and slots else ds.collate
    init = WorkerMemory() if workers and worker_heap else None
    if split is not None and workers:
        split.init_fn, init, collate = init, split.worker_init, split.collate(collate)
    loader = DataLoader(subset, batch_size=1, shuffle=False, num_workers=workers, collate_fn=collate,
                        prefetch_factor=4 if workers else None, worker_init_fn=init)
    cpu_before, faults_before = _children_cpu_s(), minor_faults(resource.RUSAGE_CHILDREN)
    batches = iter(loader)
    start, main_cpu, seen = 0.0, 0.0, 0
    for k, _batch in enumerate(batches):
        if k + 1 == skip:
            start, main_cpu = time.perf_counter(), time.process_time()
        elif k + 1 > skip:
            seen += 1
    rate = seen / (time.perf_counter() - start)
    main_ms = 1000.0 * (time.process_time() - main_cpu) / max(seen, 1)
    del batches, _batch
    gc.collect()  # the exhausted iterator joins its workers; their CPU time then counts as this process's children
    if not workers:
        return rate, None, None, main_ms
    worker_ms = 1000.0 * (_children_cpu_s() - cpu_before) / len(subset)
    return rate, worker_ms, (minor_faults(resource.RUSAGE_CHILDREN) - faults_before) / len(subset), main_ms


def profile_items(ds: ClipDataset, n: int, top: int) -> None:
    prof = cProfile.Profile()
    prof.enable()
    for i in range(n):
        ds[i]
    prof.disable()
    pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "vidseg" / "bench")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=854)
    p.add_argument("--videos", type=int, default=6)
    p.add_argument("--frames", type=int, default=36)
    p.add_argument("--clips", type=int, default=200,
                   help="clips per measurement (workers persist in training: enough clips to amortise their start)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resize", action="store_true",
                   help="crops keep their decoded size (no resize, on the CPU or the device)")
    p.add_argument("--no-slots", action="store_true",
                   help="workers hand batches over torch's usual way (fresh shared memory per tensor), not through "
                        "the reused slots of vidseg.data.handover that training uses")
    p.add_argument("--no-worker-heap", action="store_true",
                   help="workers keep glibc's adaptive heap thresholds (training fixes them: data.worker_memory)")
    p.add_argument("--no-rle-masks", action="store_true",
                   help="decode every RLE target at full size first (training keeps them as runs: data.rle_masks)")
    p.add_argument("--no-device-resize", action="store_true",
                   help="workers flip, resize and pad the crops (training leaves that to the device: "
                        "data.resize_on_device)")
    p.add_argument("--worker-split", action="store_true",
                   help="also report where the workers' CPU time goes per clip: reading frames, the rest of the "
                        "item, stacking the frames into the batch, the rest of collate and hand-over, the DataLoader "
                        "loop, other threads (scripts/_worker_split.py)")
    p.add_argument("--profile", type=int, default=0, help="print the top-N functions of ClipDataset items")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # one core per process, like a DataLoader worker
    # the reference at its best: with glibc's adaptive thresholds this process's pure decode sometimes took fresh pages
    # for every frame (1,800-1,900 faults per clip, 20-21 ms instead of 13-15), which inflated `ratio` past 1. (Not
    # with --no-worker-heap: forked workers would inherit the fixed thresholds.)
    if not args.no_worker_heap:
        fix_malloc_thresholds(64, 256)

    ds = build_dataset(args)
    n = min(args.clips, len(ds))
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rate_items(ds, 2)  # warm caches (annotation index, readers, imports)
    rounds: dict[str, list[float]] = {"pure_decode": [], "dataset_items": []}
    rounds.update({f"loader_w{w}": [] for w in args.workers})
    cpu_ms: dict[str, list[float]] = {"pure_decode": [], "dataset_items": []}
    faults: dict[str, list[float]] = {"pure_decode": [], "dataset_items": []}
    most = max(args.workers)
    concurrent = f"pure_decode_x{most}"
    if most > 1:
        rounds[concurrent], cpu_ms[concurrent] = [], []
    splits: dict[str, list[float]] = {}
    floors: list[float] = []
    threaded = f"threads_x{most}"
    for _ in range(args.repeats):
        for key, fn in (("pure_decode", rate_pure_decode), ("dataset_items", rate_items)):
            rate, ms, flt = fn(ds, n)
            rounds[key].append(rate)
            cpu_ms[key].append(ms)
            faults[key].append(flt)
        if most > 1:  # as many decoders at once as the DataLoader has workers
            rate, ms = rate_pure_decode_concurrent(ds, n, most)
            rounds[concurrent].append(rate)
            cpu_ms[concurrent].append(ms)
        if most:  # the DataLoader with nothing but decode's CPU time per item
            floor, floor_main = rate_loader_floor(n, most, cpu_ms["pure_decode"][-1])
            floors.append(floor)
            cpu_ms.setdefault("loader_floor_main", []).append(floor_main)
        for w in args.workers:
            split = WorkerSplit(w) if args.worker_split and w else None
            rate, worker_ms, worker_flt, main_ms = rate_loader(ds, n, w, slots=not args.no_slots,
                                                               worker_heap=not args.no_worker_heap, split=split)
            if split is not None and w == most:
                for name, ms in split.ms_per_clip().items():
                    splits.setdefault(name, []).append(ms)
            rounds[f"loader_w{w}"].append(rate)
            if w:  # with workers: what receiving the batches costs this (the training) process
                cpu_ms.setdefault(f"loader_w{w}_main", []).append(main_ms)
            if worker_ms is not None:
                cpu_ms.setdefault(f"loader_w{w}_workers", []).append(worker_ms)
                faults.setdefault(f"loader_w{w}_workers", []).append(worker_flt)
        if most:  # the same DataLoader over items that only decode, then decode and hand their crops over
            rounds.setdefault(f"loader_decode_w{most}", []).append(rate_loader_decode(ds, n, most, crop=False))
            rounds.setdefault(f"loader_decode_crop_w{most}", []).append(rate_loader_decode(ds, n, most, crop=True))
        if most:  # the same items and collate on threads of this process: no inter-process hand-over
            rate, ms = rate_threads(ds, n, most)
            rounds.setdefault(threaded, []).append(rate)
            cpu_ms.setdefault(threaded, []).append(ms)
        # the items' own work (reading their frames excluded) as the pipeline meets it, then with warm caches
        cold, warm = non_decode_cpu(ds, n)
        cpu_ms.setdefault("items_non_decode", []).append(cold)
        cpu_ms.setdefault("items_non_decode_predecoded", []).append(warm)
    rates = {k: statistics.median(v) for k, v in rounds.items()}
    cpu = {k: statistics.median(v) for k, v in cpu_ms.items()}
    per_worker = rates[f"loader_w{most}"] / max(most, 1)
    result = {
        "ratio": per_worker / rates["pure_decode"],
        # per worker against each of as many decoders running at once: the pipeline's share of the gap
        "ratio_concurrent_decode": per_worker / rates[concurrent] if concurrent in rates else None,
        # the ratio of a DataLoader whose items only spin for decode's CPU time: the ceiling here
        "ratio_loader_floor": statistics.median(floors) if floors else None,
        # per worker, the same DataLoader over items that only decode / decode and hand their crops over (no other
        # work): the ceiling of a pipeline that hands crops over
        "ratio_loader_decode": (rates[f"loader_decode_w{most}"] / rates["pure_decode"]
                                if f"loader_decode_w{most}" in rates else None),
        "ratio_loader_decode_crop": (rates[f"loader_decode_crop_w{most}"] / rates["pure_decode"]
                                     if f"loader_decode_crop_w{most}" in rates else None),
        # per thread, the same items and collate on as many threads of this process (no inter-process hand-over)
        "ratio_threads": rates[threaded] / rates["pure_decode"] if threaded in rates else None,
        "ratio_items": rates["dataset_items"] / rates["pure_decode"],
        "ratio_items_cpu": cpu["pure_decode"] / cpu["dataset_items"],
        "ratio_worker_cpu": (cpu["pure_decode"] / cpu[f"loader_w{most}_workers"]
                             if f"loader_w{most}_workers" in cpu else None),
        "clips_per_s": rates,
        "clips_per_s_per_worker": per_worker,
        "workers": most,
        "cpu_ms_per_clip": cpu,
        "minor_faults_per_clip": {k: statistics.median(v) for k, v in faults.items()},
        # --worker-split: the workers' CPU ms per clip by part (medians over rounds), with the most workers
        "worker_split_ms_per_clip": {k: statistics.median(v) for k, v in splits.items()} or None,
        "non_decode_cpu_ms_per_clip": cpu["dataset_items"] - cpu["pure_decode"],
        # the items' CPU time outside reading their frames, measured inside the same items: as the pipeline meets
        # it, and when the frames were decoded beforehand (no decoding between clips: warm caches)
        "non_decode_cpu_ms_per_clip_cold": cpu["items_non_decode"],
        "non_decode_cpu_ms_per_clip_warm": cpu["items_non_decode_predecoded"],
        "colour_on_device_ms": colour_on_device_ms(ds),
        "resize_on_device_ms": resize_on_device_ms(ds),
        "handover_copy_6mb_ms": handover_copy_ms(),
        "rounds": rounds,
        "cpu_ms_rounds": cpu_ms,
        "clip": {"frames": 3, "height": args.height, "width": args.width, "clips": n, "no_resize": args.no_resize,
                 "slots": not args.no_slots, "worker_heap": not args.no_worker_heap,
                 "rle_masks": not args.no_rle_masks, "device_resize": not args.no_device_resize,
                 "transform": repr(ds.transform), "sampler": repr(ds.sampler)},
        "machine": {**machine(), "load_avg_1min_at_start": load_start},
    }
    m = result["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), load {load_start:.2f} at "
          f"start, {m['load_avg_1min']:.2f} at end")
    print(f"{args.height}p synthetic YouTube-VIS, 3-frame clips, {n} clips x {args.repeats} rounds (median)")
    print(f"{'pipeline':<34}{'clips/s':>10}{'vs decode':>11}{'CPU ms/clip':>13}")
    print(f"{'pure decode (same frames, reader)':<34}{rates['pure_decode']:>10.1f}{1.0:>11.2f}"
          f"{cpu['pure_decode']:>13.2f}")
    if concurrent in rates:
        rc = rates[concurrent]
        print(f"{f'pure decode, {most} processes at once':<34}{rc:>10.1f}{rc / rates['pure_decode']:>11.2f}"
              f"{cpu[concurrent]:>13.2f}  (each)")
    print(f"{'ClipDataset items, this process':<34}{rates['dataset_items']:>10.1f}{result['ratio_items']:>11.2f}"
          f"{cpu['dataset_items']:>13.2f}")
    for w in args.workers:
        r = rates[f"loader_w{w}"]
        worker_ms = cpu.get(f"loader_w{w}_workers")
        print(f"{f'DataLoader num_workers={w}':<34}{r:>10.1f}{r / rates['pure_decode']:>11.2f}"
              + (f"{worker_ms:>13.2f}  (workers' CPU, hand-over included; receiving: {cpu[f'loader_w{w}_main']:.2f} "
                 "ms in this process)" if worker_ms is not None else ""))
    print(f"per worker (num_workers={most}): {per_worker:.1f} clips/s -> ratio {result['ratio']:.2f}"
          + (f"; against each of {most} decoders at once: {result['ratio_concurrent_decode']:.2f}"
             if result["ratio_concurrent_decode"] is not None else ""))
    if result["ratio_loader_floor"] is not None:
        print(f"the same DataLoader over items that only spin for decode's CPU time reaches "
              f"{result['ratio_loader_floor']:.2f} per worker (its own work and the machine's sharing: the ceiling; "
              f"receiving: {cpu['loader_floor_main']:.2f} ms in this process)")
    if result["ratio_loader_decode"] is not None:
        print(f"the same DataLoader over items that only decode reaches {result['ratio_loader_decode']:.2f} per "
              f"worker, and {result['ratio_loader_decode_crop']:.2f} when they also hand their crops over (no other "
              "work: the ceiling of a pipeline that hands crops over)")
    if result["ratio_threads"] is not None:
        print(f"the same items and collate on {most} threads of this process (no worker processes, no hand-over) "
              f"reach {result['ratio_threads']:.2f} per thread ({cpu[threaded]:.2f} CPU ms per clip)")
    if result["ratio_worker_cpu"] is not None:
        print(f"CPU time: one worker with a core of its own would reach {result['ratio_worker_cpu']:.2f}x of "
              f"decode's rate (decode CPU ms / worker CPU ms per clip)")
    print(f"CPU time: items/decode {result['ratio_items_cpu']:.2f}x of decode's rate, non-decode work "
          f"{result['non_decode_cpu_ms_per_clip']:.2f} ms/clip (inside the items: "
          f"{result['non_decode_cpu_ms_per_clip_cold']:.2f}, and {result['non_decode_cpu_ms_per_clip_warm']:.2f} with "
          f"their frames decoded beforehand: warm caches); colour jitter moved to the device: "
          f"{result['colour_on_device_ms']:.2f} ms/clip if run on this CPU; the crops' resize moved to the device: "
          f"{result['resize_on_device_ms']:.2f} ms/clip if run on this CPU")
    copy = result["handover_copy_6mb_ms"]
    print(f"copying 6 MB into fresh shared memory: {copy['fresh_shared']:.2f} ms CPU, into a reused slot: "
          f"{copy['reused_slot']:.2f} ms")
    if result["worker_split_ms_per_clip"]:
        print(f"workers' CPU ms per clip (num_workers={most}): " + ", ".join(
            f"{k.replace('_', ' ')} {v:.2f}" for k, v in result["worker_split_ms_per_clip"].items()))
    flt = result["minor_faults_per_clip"]
    print("minor page faults per clip: " + ", ".join(f"{k} {v:.0f}" for k, v in flt.items()))
    if args.profile:
        profile_items(ds, n, args.profile)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
