"""`vidseg.predict` on user videos: an mp4 written by PyAV, one written by OpenCV and a frame folder; every
task's prompts; the outputs on disk; clear errors for bad videos and prompts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.inference._tiny import build_tiny, compose, moving_disc_frames, save_run

from vidseg.data.formats.common import write_index_png
from vidseg.data.records import AnnotationFormatError, CorruptMediaError, MissingFileError
from vidseg.data.video import probe_video
from vidseg.inference.outputs import decode_rle
from vidseg.predict import predict, read_video_record

N, H, W = 26, 72, 96
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vidseg_predict_cache")


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import av
    import cv2

    root = tmp_path_factory.mktemp("videos")
    frames = moving_disc_frames(N, H, W, radius=12, speed=1.5)
    with av.open(str(root / "pyav.mp4"), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=Fraction(12))
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode(None))
    writer = cv2.VideoWriter(str(root / "opencv.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 12, (W, H))
    for f in frames:
        writer.write(np.ascontiguousarray(f[..., ::-1]))
    writer.release()
    folder = root / "frames"
    folder.mkdir()
    for t, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"img_{t:03d}.jpg", quality=95)
    yy, xx = np.mgrid[:H, :W]
    disc0 = (xx - 14) ** 2 + (yy - H / 2) ** 2 <= 12**2
    write_index_png(root / "prompt.png", disc0.astype(np.uint8) * 3)  # object id 3
    later = root / "prompts"  # DAVIS style: object 3 on the first frame, object 5 from frame 10
    later.mkdir()
    write_index_png(later / "img_000.png", disc0.astype(np.uint8) * 3)
    lab = np.zeros((H, W), np.uint8)
    lab[5:15, 70:90] = 5
    write_index_png(later / "img_010.png", lab)
    return {"pyav": root / "pyav.mp4", "opencv": root / "opencv.mp4", "folder": folder, "prompt": root / "prompt.png",
            "prompts": later, "disc0": disc0, "square": lab == 5}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> dict[str, Path]:
    out = {}
    for task in ("vos", "vis"):
        run = tmp_path_factory.mktemp(f"run_{task}")
        cfg, module, _ = build_tiny(task, cache, run / "train")
        out[task] = save_run(cfg, module, run)
    return out


def _predict(ckpt: Path, cache: Path, out: Path, *overrides: str) -> dict:
    cfg = compose("predict", [f"ckpt={ckpt}", f"out={out}", f"paths.cache_dir={cache}",
                              f"paths.output_dir={out}", "progress=false", "device=cpu", *overrides])
    predict(cfg)
    return json.loads((out / "tracks.json").read_text())


def _check_outputs(out: Path, doc: dict, n: int) -> None:
    pngs = sorted((out / "masks").glob("*.png"))
    assert [p.stem for p in pngs] == doc["frames"] and len(pngs) == n
    assert probe_video(out / "overlay.mp4").num_frames == n
    with Image.open(out / "preview.gif") as gif:
        assert gif.n_frames >= 2 and gif.size[0] <= 320
    for trk in doc["tracks"]:
        assert len(trk["masks"]) == n and {"id", "category_id", "category", "score"} <= set(trk)


@pytest.mark.parametrize("source", ["pyav", "opencv", "folder"])
def test_vos_predict_on_every_kind_of_video(source: str, videos, ckpts, cache, tmp_path: Path) -> None:
    out = tmp_path / "out"
    doc = _predict(ckpts["vos"], cache, out, "task=vos", f"video={videos[source]}", f"prompt={videos['prompt']}",
                   "clip_len=8", "clip_overlap=4")
    _check_outputs(out, doc, N)
    assert [t["id"] for t in doc["tracks"]] == [3]
    # the prompt mask wins on its own frame, in tracks.json and in the index PNG
    assert np.array_equal(decode_rle(doc["tracks"][0]["masks"][0]), videos["disc0"])
    first = np.asarray(Image.open(sorted((out / "masks").glob("*.png"))[0]))
    assert np.array_equal(first == 3, videos["disc0"])
    if source == "folder":
        assert doc["frames"][0] == "img_000"


def test_vos_prompt_folder_adds_objects_on_later_frames(videos, ckpts, cache, tmp_path: Path) -> None:
    doc = _predict(ckpts["vos"], cache, tmp_path / "o", "task=vos", f"video={videos['folder']}",
                   f"prompt={videos['prompts']}", "clip_len=8", "clip_overlap=4")
    by_id = {t["id"]: t["masks"] for t in doc["tracks"]}
    assert sorted(by_id) == [3, 5]
    assert all(m is None for m in by_id[5][:10])
    assert np.array_equal(decode_rle(by_id[5][10]), videos["square"])


def test_pet_points_and_vis_vocabulary(videos, ckpts, cache, tmp_path: Path) -> None:
    """PET through the VOS checkpoint is a missing task (clear error); VIS uses the trained vocabulary."""
    from vidseg.inference.loading import CheckpointMismatchError

    with pytest.raises(CheckpointMismatchError, match="task 'pet'"):
        _predict(ckpts["vos"], cache, tmp_path / "p", "task=pet", f"video={videos['pyav']}",
                 "points=[[14,36]]", "points_frame=0")
    doc = _predict(ckpts["vis"], cache, tmp_path / "v", "task=vis", f"video={videos['opencv']}")
    _check_outputs(tmp_path / "v", doc, N)
    assert doc["dataset"] == "syn_ytvis" and 0 < len(doc["tracks"]) <= 10
    assert all(isinstance(t["category"], str) for t in doc["tracks"])
    with pytest.raises(Exception, match="no semantic queries for dataset 'coco'"):
        _predict(ckpts["vis"], cache, tmp_path / "w", "task=vis", f"video={videos['pyav']}", "dataset=coco")


def test_predict_cli_subprocess(videos, ckpts, cache, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    env = {**os.environ, "VIDSEG_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "vidseg.predict", f"ckpt={ckpts['vos']}", "task=vos", f"video={videos['pyav']}",
           f"prompt={videos['prompt']}", f"out={out}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "frame" in proc.stderr  # the progress bar over frames
    _check_outputs(out, json.loads((out / "tracks.json").read_text()), N)


def test_bad_videos_and_prompts_name_the_file(videos, ckpts, cache, tmp_path: Path) -> None:
    import av

    empty = tmp_path / "zero_bytes.mp4"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(2048))
    no_frames = tmp_path / "no_frames.mp4"
    with av.open(str(no_frames), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=12)
        s.width, s.height = W, H
    for bad in (empty, garbage, no_frames):
        with pytest.raises((CorruptMediaError, MissingFileError), match=bad.name):
            read_video_record(bad)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(MissingFileError, match="empty_dir"):
        read_video_record(tmp_path / "empty_dir")
    with pytest.raises(MissingFileError, match="nope.mp4"):
        read_video_record(tmp_path / "nope.mp4")
    small = tmp_path / "small.png"
    write_index_png(small, np.ones((10, 10), np.uint8))
    with pytest.raises(AnnotationFormatError, match="small.png: prompt mask is 10x10"):
        _predict(ckpts["vos"], cache, tmp_path / "x", "task=vos", f"video={videos['pyav']}", f"prompt={small}")
