"""`python -m vidseg.metrics` end to end on synthetic official-format datasets: GT written back as results
scores the maximum for every benchmark; a degraded prediction scores less; bad input exits != 0 with a
message naming the file and field."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vidseg.data.formats import get_format
from vidseg.data.formats.common import encode_rle
from vidseg.data.records import IGNORE_LABEL, DatasetRecord, TrackPrediction, VideoPrediction
from vidseg.data.synthetic import SyntheticParams, generate
from vidseg.metrics.__main__ import BENCHMARKS, gt_location, main

# benchmark -> (format, GT argument relative to the dataset root, prediction argument relative to its folder)
CASES = {
    "ytvis": ("ytvis", "val/instances.json", "results.json"),
    "ovis": ("ytvis", "val/instances.json", "results.json"),
    "davis": ("davis", ".", "."),
    "kitti-step": ("kitti_step", "panoptic_maps/val", "."),
    "cityscapes-vps": ("cityscapes_vps", "panoptic_gt_val_city_vps.json", "."),
    "vipseg": ("vipseg", ".", "."),
    "vspw": ("vspw", ".", "."),
    "burst": ("burst", "val/all_classes.json", "results.json"),
}
PANOPTIC = {"kitti_step", "cityscapes_vps", "vipseg"}
MAXIMUM = {
    "ytvis": {"AP": 1.0, "AP50": 1.0, "AP75": 1.0},
    "ovis": {"AP": 1.0, "AP50": 1.0, "AP75": 1.0},
    "davis": {"J&F-Mean": 1.0, "J-Mean": 1.0, "F-Mean": 1.0, "J-Recall": 1.0, "F-Recall": 1.0},
    "kitti-step": {"STQ": 1.0, "AQ": 1.0, "SQ_IoU": 1.0},
    "cityscapes-vps": {"VPQ": 100.0, "VPQ_thing": 100.0, "VPQ_stuff": 100.0},
    "vipseg": {"VPQ": 100.0, "VPQ_thing": 100.0, "VPQ_stuff": 100.0, "STQ": 1.0},
    "vspw": {"mIoU": 1.0, "mVC_8": 1.0},
    "burst": {"HOTA": 100.0, "DetA": 100.0, "AssA": 100.0},
}


def gt_as_predictions(dataset: DatasetRecord, degrade: bool = False) -> list[VideoPrediction]:
    """The ground truth as predictions in the form each writer takes (panoptic maps for VPS, semantic maps
    for VSS, tracks with per-frame RLEs otherwise). `degrade` drops the first track / class of each video
    in every other frame."""
    preds = []
    for v in dataset.videos:
        names = v.frames.names
        labels = {a.frame: a.decode() for a in v.annotations}
        if dataset.format in PANOPTIC or dataset.format == "vspw":
            frames = v.annotated_frames
            sems, insts = [], []
            for k, f in enumerate(frames):
                lab = labels[f]
                sem = lab.semantic.astype(np.int32).copy()
                inst = np.zeros(sem.shape, np.int32)
                for tid, mask in lab.masks.items():
                    inst[mask] = 1 + sorted(v.tracks).index(tid)  # one instance id per track
                if degrade and k % 2:
                    sem[sem != IGNORE_LABEL] = dataset.categories[0].id
                    inst[:] = 0
                sems.append(np.where(sem == IGNORE_LABEL, dataset.categories[0].id, sem)
                            if dataset.format == "vspw" else sem)
                insts.append(inst)
            kw = ({"semantic_maps": sems} if dataset.format == "vspw"
                  else {"panoptic_maps": list(zip(sems, insts))})
            preds.append(VideoPrediction(video_id=v.video_id, height=v.height, width=v.width,
                                         frame_names=[names[f] for f in frames], **kw))
            continue
        tracks = []
        for i, (tid, info) in enumerate(sorted(v.tracks.items())):
            masks = []
            for t in range(v.num_frames):
                m = labels[t].masks.get(tid) if t in labels else None
                if m is not None and degrade and i == 0 and t % 2:
                    m = np.roll(m, m.shape[1] // 3, axis=1)
                masks.append(encode_rle(m) if m is not None and m.any() else None)
            tracks.append(TrackPrediction(track_id=tid, category_id=info.category_id, score=1.0, masks=masks))
        preds.append(VideoPrediction(video_id=v.video_id, height=v.height, width=v.width,
                                     frame_names=list(names), tracks=tracks))
    return preds


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("syn")
    params = SyntheticParams(seed=1, height=48, width=64, videos_train=1, videos_val=2, frames=10)
    for fmt in sorted({c[0] for c in CASES.values()}):
        generate(fmt, root / fmt, params)
    return root


def _write_predictions(benchmark: str, root: Path, out: Path, degrade: bool = False) -> tuple[Path, Path]:
    fmt_name, gt_rel, pred_rel = CASES[benchmark]
    gt_arg = root / fmt_name / gt_rel
    loc, split, options = gt_location(benchmark, gt_arg, None)
    fmt = get_format(fmt_name)
    dataset = fmt.read(loc, split, **(BENCHMARKS[benchmark].reader_options | options))
    fmt.write_results(out / pred_rel if pred_rel != "." else out, gt_as_predictions(dataset, degrade), dataset)
    return gt_arg, out / pred_rel if pred_rel != "." else out


def _run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, dict | None, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


@pytest.mark.parametrize("benchmark", sorted(CASES))
def test_perfect_predictions_score_the_maximum(
    benchmark: str, synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gt_arg, pred_arg = _write_predictions(benchmark, synthetic_root, tmp_path)
    code, out, err = _run(capsys, benchmark, gt_arg, pred_arg)
    assert code == 0, err
    assert list(out) == list(BENCHMARKS[benchmark].keys)  # exactly the official keys, in order
    for key, value in MAXIMUM[benchmark].items():
        assert out[key] == pytest.approx(value), (key, out)
    # a degraded prediction scores strictly less on the headline number
    degraded = tmp_path / "degraded"
    _, pred_bad = _write_predictions(benchmark, synthetic_root, degraded, degrade=True)
    code, worse, err = _run(capsys, benchmark, gt_arg, pred_bad)
    assert code == 0, err
    headline = BENCHMARKS[benchmark].keys[0]
    assert worse[headline] < out[headline] - 1e-6, (headline, worse)


def test_all_keys_and_split_option(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gt_arg, pred_arg = _write_predictions("vipseg", synthetic_root, tmp_path)
    code, out, err = _run(capsys, "vipseg", gt_arg, pred_arg, "--all", "--split", "val")
    assert code == 0, err
    assert {"PQ_k0", "PQ_k35", "AQ", "SQ_IoU"} <= set(out)
    assert any(k.startswith("STQ/") for k in out)
    code, _, err = _run(capsys, "vipseg", gt_arg, pred_arg, "--split", "nosuchsplit")
    assert code == 2 and "nosuchsplit" in err


def test_bad_input_exits_nonzero_naming_file_and_field(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # YouTube-VIS results entry without `score`
    gt_arg, pred_arg = _write_predictions("ytvis", synthetic_root, tmp_path / "y")
    entries = json.loads(pred_arg.read_text())
    del entries[0]["score"]
    pred_arg.write_text(json.dumps(entries))
    code, _, err = _run(capsys, "ytvis", gt_arg, pred_arg)
    assert code == 2 and str(pred_arg) in err and "score" in err
    # truncated JSON
    pred_arg.write_text("[{")
    code, _, err = _run(capsys, "ytvis", gt_arg, pred_arg)
    assert code == 2 and str(pred_arg) in err
    # VSPW prediction PNG with a class id outside the vocabulary
    gt_vspw, pred_vspw = _write_predictions("vspw", synthetic_root, tmp_path / "v")
    png = sorted(pred_vspw.rglob("*.png"))[0]
    from PIL import Image

    arr = np.array(Image.open(png))
    arr[0, 0] = 200
    Image.fromarray(arr).save(png)
    code, _, err = _run(capsys, "vspw", gt_vspw, pred_vspw)
    assert code == 2 and "200" in err and (png.parent.name in err or str(png) in err)
    # missing paths
    code, _, err = _run(capsys, "davis", tmp_path / "nothing", tmp_path)
    assert code == 2 and "nothing" in err
    code, _, err = _run(capsys, "kitti-step", synthetic_root / "kitti_step", tmp_path / "no_results")
    assert code == 2 and "no_results" in err


@pytest.mark.slow
def test_module_entry_point(synthetic_root: Path, tmp_path: Path) -> None:
    gt_arg, pred_arg = _write_predictions("kitti-step", synthetic_root, tmp_path)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    proc = subprocess.run([sys.executable, "-m", "vidseg.metrics", "kitti-step", str(gt_arg), str(pred_arg)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(out) == {"STQ", "AQ", "SQ_IoU"} and not any(math.isnan(v) for v in out.values())
    assert out["STQ"] == pytest.approx(1.0)
