"""Format "video": unannotated video files / frame folders, and the mp4 ground-truth writer."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vidseg.data.formats import get_format
from vidseg.data.formats import video_folder as fmt
from vidseg.data.records import (
    AnnotationFormatError,
    CorruptMediaError,
    DatasetRecord,
    GroundTruthVideo,
    MissingFileError,
)
from vidseg.data.video import open_frames


def moving_square_video(video_id: str, n: int, h: int = 48, w: int = 64, fps: float = 6.0) -> GroundTruthVideo:
    frames, maps = [], []
    for t in range(n):
        img = np.zeros((h, w, 3), np.uint8)
        img[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
        img[..., 2] = 60
        m = np.zeros((h, w), np.int32)
        m[10:26, 4 + 3 * t : 20 + 3 * t] = 1
        img[m == 1] = (250, 240, 20)
        frames.append(img)
        maps.append(m)
    return GroundTruthVideo(video_id, frames, maps, [m.copy() for m in maps], {1: 1}, fps=fps)


def test_registry_points_here():
    assert get_format("video") is fmt


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_write_ground_truth_mp4_round_trip(tmp_path, backend):
    videos = [moving_square_video("0000", 9), moving_square_video("0001", 14, fps=12.5)]
    out = fmt.write_ground_truth(tmp_path, "train", videos, [])
    assert sorted(p.name for p in out.iterdir()) == ["0000.mp4", "0001.mp4"]
    ds = fmt.read(tmp_path, "train")
    assert isinstance(ds, DatasetRecord) and ds.format == "video" and ds.split == "train"
    assert [v.video_id for v in ds.videos] == ["0000", "0001"]
    for rec, gt in zip(ds.videos, videos):
        assert rec.num_frames == len(gt.frames)  # exact frame count
        assert (rec.height, rec.width) == (48, 64)
        assert rec.fps == pytest.approx(gt.fps)
        assert rec.frames.kind == "video" and rec.frames.names[:2] == ["00000", "00001"]
        assert rec.tracks == {} and rec.annotations == []
        decoded = open_frames(rec.frames, backend).read(list(range(rec.num_frames)))
        err = np.abs(decoded.astype(int) - np.stack(gt.frames)).mean(axis=(1, 2, 3))
        assert err.max() < 4.0, err  # lossy but close, frame by frame (so no shift/reorder)


def test_mp4_writer_is_deterministic(tmp_path):
    video = moving_square_video("0000", 8)
    a = fmt.write_ground_truth(tmp_path / "a", "val", [video]) / "0000.mp4"
    b = fmt.write_ground_truth(tmp_path / "b", "val", [video]) / "0000.mp4"
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


def test_odd_size_video(tmp_path):
    video = moving_square_video("odd", 5, h=33, w=47)
    fmt.write_ground_truth(tmp_path, "x", [video])
    rec = fmt.read(tmp_path / "x" / "odd.mp4").videos[0]
    assert (rec.num_frames, rec.height, rec.width) == (5, 33, 47)
    frames = open_frames(rec.frames, "pyav").read([0, 4])
    assert np.abs(frames.astype(int) - np.stack([video.frames[0], video.frames[4]])).mean() < 4.0


def _frame_folder(folder: Path, n: int, h: int = 20, w: int = 30, ext: str = ".jpg") -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((h, w, 3), 10 * i, np.uint8)).save(folder / f"img_{i:03d}{ext}")


def test_read_single_video_frame_folder_and_mixed_folder(tmp_path):
    fmt.write_ground_truth(tmp_path / "mixed", "", [moving_square_video("clip", 7)])
    _frame_folder(tmp_path / "mixed" / "seq", 4)
    (tmp_path / "mixed" / "notes.txt").write_text("ignored")

    single = fmt.read(tmp_path / "mixed" / "clip.mp4")
    assert [v.video_id for v in single.videos] == ["clip"] and single.videos[0].num_frames == 7

    folder = fmt.read(tmp_path / "mixed" / "seq", fps=3.0)
    (rec,) = folder.videos
    assert rec.video_id == "seq" and rec.frames.kind == "images" and rec.fps == 3.0
    assert rec.frames.names == ["img_000", "img_001", "img_002", "img_003"]
    assert (rec.num_frames, rec.height, rec.width) == (4, 20, 30)

    both = fmt.read(tmp_path / "mixed")
    assert [(v.video_id, v.frames.kind, v.num_frames) for v in both.videos] == [
        ("clip", "video", 7),
        ("seq", "images", 4),
    ]
    assert both.categories == []


def test_read_errors(tmp_path):
    with pytest.raises(MissingFileError, match="does not exist"):
        fmt.read(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match=r"empty.*no video files or frame folders"):
        fmt.read(tmp_path / "empty")
    with pytest.raises(MissingFileError, match=r"empty[/\\]train"):
        fmt.read(tmp_path / "empty", "train")
    # a video file and a frame folder with the same id
    fmt.write_ground_truth(tmp_path / "dup", "", [moving_square_video("a", 3)])
    _frame_folder(tmp_path / "dup" / "a", 2)
    with pytest.raises(AnnotationFormatError, match=r"share the id.*'a'"):
        fmt.read(tmp_path / "dup")
    # a corrupt video among good ones is reported, not skipped
    fmt.write_ground_truth(tmp_path / "bad", "", [moving_square_video("good", 3)])
    (tmp_path / "bad" / "broken.mp4").write_bytes(b"")
    with pytest.raises(CorruptMediaError, match=r"broken\.mp4"):
        fmt.read(tmp_path / "bad")
    # a corrupt first image (its header is read for the size)
    _frame_folder(tmp_path / "badimg", 2)
    (tmp_path / "badimg" / "img_000.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(CorruptMediaError, match=r"img_000\.jpg"):
        fmt.read(tmp_path / "badimg")
    with pytest.raises(TypeError, match="unknown options"):
        fmt.read(tmp_path / "bad", colour="red")


def test_no_result_format(tmp_path):
    ds = DatasetRecord("video", "video", "", tmp_path, [], [])
    with pytest.raises(AnnotationFormatError, match="unannotated"):
        fmt.write_results(tmp_path / "res", [], ds)
    with pytest.raises(AnnotationFormatError, match="unannotated"):
        fmt.read_results(tmp_path / "res", ds)


def test_writer_rejects_bad_frames(tmp_path):
    video = moving_square_video("v", 3)
    video.frames[1] = video.frames[1].astype(np.float32)
    with pytest.raises(ValueError, match=r"frame 1 is float32"):
        fmt.write_ground_truth(tmp_path, "s", [video])
    assert not list((tmp_path / "s").iterdir())  # no half-written file left behind
