"""data/video.py: frame folders and video files through PIL, PyAV and decord; lazy opening; errors."""

from __future__ import annotations

import pickle
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from vidseg.data.records import ClipSamplingError, CorruptMediaError, FrameSource, MissingFileError
from vidseg.data.video import (
    DecordReader,
    FrameSizeError,
    ImageFolderReader,
    PyAVReader,
    open_frames,
    probe_video,
    read_image_rgb,
    source_from_path,
)


def pattern_frames(n: int, h: int, w: int) -> list[np.ndarray]:
    """Frames that differ per frame (a moving gradient + per-frame block code) so mix-ups are detectable."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        r = (xx * 4 + i * 9) % 256
        g = (yy * 3 + i * 17) % 256
        b = np.full((h, w), (i * 37) % 256)
        out.append(np.stack([r, g, b], -1).astype(np.uint8))
    return out


def write_video(path: Path, frames: list[np.ndarray], codec: str = "libx264", fps: int = 10, **opts: str) -> Path:
    """Encode frames; libx264 with a short GOP (keyframe every 4 frames, no B-frames) unless opts say."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            s.options = {"crf": "10", "g": "4", "bf": "0", "threads": "1", **opts}
        else:
            s.options = {"g": "4", **opts}
            s.bit_rate = 20_000_000
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode(None))
    return path


def decode_all(path: Path) -> np.ndarray:
    """Independent reference: plain sequential PyAV decode of every frame."""
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture(scope="module")
def mp4(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    frames = pattern_frames(16, 48, 80)
    return write_video(tmp_path_factory.mktemp("v") / "clip.mp4", frames), frames


def test_probe_video_exact(mp4):
    path, frames = mp4
    info = probe_video(path)
    assert (info.num_frames, info.height, info.width) == (16, 48, 80)
    assert info.fps == pytest.approx(10.0)


@pytest.mark.parametrize("backend", ["pyav", "decord"])
@pytest.mark.parametrize(
    ("ext", "codec", "size"),
    [("mp4", "libx264", (48, 80)), ("mp4", "libx264", (96, 96)), ("avi", "mpeg4", (32, 48)),
     ("mkv", "libx264", (48, 64)), ("mov", "mpeg4", (48, 64))],
)  # fmt: skip
def test_random_access_matches_sequential_decode(tmp_path, backend, ext, codec, size):
    # 96x96 and 32x48 hit decord's padded-row output (dmlc/decord#336); the reader must undo it.
    frames = pattern_frames(12, *size)
    path = write_video(tmp_path / f"v.{ext}", frames, codec)
    ref = decode_all(path)
    assert len(ref) == 12
    reader = open_frames(path, backend)
    assert isinstance(reader, PyAVReader if backend == "pyav" else DecordReader)
    assert len(reader) == 12
    for idx in ([0, 1, 2], [9, 3, 7], [11], [5, 5, 0], [4, 5, 6], [7, 8, 9]):
        out = reader.read(idx)
        assert out.dtype == np.uint8 and out.shape == (len(idx), *size, 3)
        np.testing.assert_array_equal(out, ref[idx])
    # and the decoded frames are close to what was encoded (lossy codec, yuv420p)
    assert np.abs(reader.read(list(range(12))).astype(int) - np.stack(frames)).mean() < 6
    reader.close()


class CountingPyAVReader(PyAVReader):
    """Counts frames coming out of the decoder, to check that only the needed GOP part is decoded."""

    decoded = 0
    seeks = 0

    def _seek(self, index: int) -> None:
        super()._seek(index)
        type(self).seeks += 1
        inner = self._dec_iter

        def counting():
            for frame in inner:
                type(self).decoded += 1
                yield frame

        self._dec_iter = counting()


def test_pyav_decodes_only_from_the_keyframe_and_continues_sequential_reads(mp4):
    path, _ = mp4  # keyframes at 0, 4, 8, 12 (g=4, no B-frames)
    r = CountingPyAVReader(path)
    r.read([13])
    assert (r.decoded, r.seeks) == (2, 1)  # keyframe 12, then 13
    r.read([14, 15])  # continues from 13 without seeking
    assert (r.decoded, r.seeks) == (4, 1)
    r.read([1])  # backwards: seek to keyframe 0
    assert (r.decoded, r.seeks) == (6, 2)
    r.read([9])  # keyframe 8 lies after position 1: seek instead of decoding 2..8
    assert (r.decoded, r.seeks) == (8, 3)


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_reader_is_lazy_and_picklable(mp4, backend):
    path, _ = mp4
    ref = decode_all(path)
    reader = open_frames(path, backend)
    assert reader._handle is None  # nothing opened before the first read
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(clone.read([3, 10]), ref[[3, 10]])
    used = pickle.loads(pickle.dumps(clone))  # after use: the handle is dropped, reopened on demand
    assert used._handle is None
    np.testing.assert_array_equal(used.read([10, 2]), ref[[10, 2]])
    used._pid = -1  # as if inherited through fork: must reopen in this process
    np.testing.assert_array_equal(used.read([15]), ref[[15]])
    assert used._pid is not None and used._pid > 0


def test_open_frames_with_frame_source_and_auto_backend(mp4, tmp_path):
    path, _ = mp4
    src = FrameSource(kind="video", video_path=path, names=[f"{i:05d}" for i in range(16)])
    reader = open_frames(src)
    assert isinstance(reader, PyAVReader) and len(reader) == 16
    np.testing.assert_array_equal(reader.read([6]), decode_all(path)[[6]])
    assert source_from_path(path).names == src.names


@pytest.fixture
def frame_folder(tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    frames = pattern_frames(5, 24, 32)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i:05d}.png")
    return folder, frames


def test_image_folder_exact(frame_folder):
    folder, frames = frame_folder
    reader = open_frames(folder)
    assert isinstance(reader, ImageFolderReader) and len(reader) == 5
    out = reader.read([4, 0, 4])
    np.testing.assert_array_equal(out, np.stack([frames[4], frames[0], frames[4]]))
    # palette / grayscale images come back as RGB
    Image.fromarray(frames[1][..., 0]).save(folder / "00001.png")
    out = open_frames(folder, "pil").read([1])
    np.testing.assert_array_equal(out[0], np.repeat(frames[1][..., :1], 3, axis=2))


@pytest.mark.parametrize(("mode", "save"), [
    ("RGB", {"quality": 90}),  # 4:2:0, as datasets ship them
    ("RGB", {"quality": 95, "subsampling": 0}),  # 4:4:4
    ("RGB", {"quality": 75, "progressive": True}),
    ("L", {"quality": 90}),
    ("CMYK", {"quality": 90}),
])
def test_jpeg_frames_decode_to_the_same_pixels_as_pil(tmp_path, mode, save):
    frames = pattern_frames(3, 37, 53)  # odd sizes: chroma subsampling at the edges
    paths = []
    for i, f in enumerate(frames):
        image = Image.fromarray(f) if mode == "RGB" else Image.fromarray(f).convert(mode)
        paths.append(tmp_path / f"{i:05d}.jpg")
        image.save(paths[-1], **save)
    got = open_frames(tmp_path).read([2, 0, 1])
    want = np.stack([np.asarray(Image.open(paths[i]).convert("RGB")) for i in (2, 0, 1)])
    assert got.dtype == np.uint8 and got.shape == (3, 37, 53, 3) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)


def test_a_png_named_jpg_is_still_read(frame_folder):
    folder, frames = frame_folder
    (folder / "00002.png").rename(folder / "00002.jpg")  # PNG bytes: the JPEG decoder refuses, PIL reads them
    np.testing.assert_array_equal(open_frames(folder).read([2])[0], frames[2])


def test_jpegs_decode_straight_into_the_given_array(tmp_path):
    frames = pattern_frames(2, 37, 53)
    Image.fromarray(frames[0]).save(tmp_path / "a.jpg", quality=90)
    Image.fromarray(frames[1]).save(tmp_path / "b.png")
    clip = np.zeros((2, 37, 53, 3), np.uint8)
    got = read_image_rgb(tmp_path / "a.jpg", out=clip[1])
    assert np.shares_memory(got, clip) and got.shape == (37, 53, 3)
    np.testing.assert_array_equal(clip[1], np.asarray(Image.open(tmp_path / "a.jpg").convert("RGB")))
    assert not clip[0].any()
    got = read_image_rgb(tmp_path / "b.png", out=clip[0])  # other images are copied in
    assert np.shares_memory(got, clip)
    np.testing.assert_array_equal(clip[0], frames[1])
    for name in ("a.jpg", "b.png"):
        with pytest.raises(FrameSizeError, match=rf"{name}: size 37x53, expected 36x53") as e:
            read_image_rgb(tmp_path / name, out=np.zeros((36, 53, 3), np.uint8))
        assert e.value.size == (37, 53)


@pytest.mark.parametrize("first", ["jpg", "png"])
def test_a_clip_of_mixed_and_repeated_frames(tmp_path, first):
    frames = pattern_frames(3, 37, 53)
    kinds = [first, "png" if first == "jpg" else "jpg", first]
    paths = []
    for i, (f, kind) in enumerate(zip(frames, kinds, strict=True)):
        paths.append(tmp_path / f"{i:05d}.{kind}")
        Image.fromarray(f).save(paths[-1], **({"quality": 90} if kind == "jpg" else {}))
    got = open_frames(tmp_path).read([0, 1, 0, 2, 1])
    want = np.stack([np.asarray(Image.open(paths[i]).convert("RGB")) for i in (0, 1, 0, 2, 1)])
    assert got.shape == (5, 37, 53, 3) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)


def test_jpegs_keep_pils_decompression_bomb_rule(tmp_path, monkeypatch):
    Image.fromarray(pattern_frames(1, 37, 53)[0]).save(tmp_path / "00000.jpg", quality=90)  # 1961 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # warned above 1000, refused above 2000
    with pytest.warns(Image.DecompressionBombWarning, match=r"00000\.jpg.*1961 pixels"):
        assert open_frames(tmp_path).read([0]).shape == (1, 37, 53, 3)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 900)
    with pytest.raises(CorruptMediaError, match=r"00000\.jpg \(frame 0\): cannot decode.*decompression bomb"):
        open_frames(tmp_path).read([0])


# ----------------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_zero_byte_video(tmp_path, backend):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(CorruptMediaError, match=r"empty\.mp4.*0 bytes"):
        open_frames(path, backend)
    with pytest.raises(CorruptMediaError, match=r"empty\.mp4"):
        probe_video(path)
    src = FrameSource(kind="video", video_path=path, names=["00000"])
    with pytest.raises(CorruptMediaError, match=r"empty\.mp4"):
        open_frames(src, backend).read([0])


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_truncated_mp4_index_at_end(mp4, tmp_path, backend):
    path, _ = mp4
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # moov atom (index) is lost
    with pytest.raises(CorruptMediaError, match=r"cut\.mp4"):
        probe_video(cut)
    src = FrameSource(kind="video", video_path=cut, names=[f"{i:05d}" for i in range(16)])
    with pytest.raises(CorruptMediaError, match=r"cut\.mp4"):
        open_frames(src, backend).read([0])


def test_truncated_mp4_index_at_front(tmp_path):
    frames = pattern_frames(16, 48, 80)
    path = write_video(tmp_path / "fast.mp4", frames, movflags="faststart")
    cut = tmp_path / "cut_fast.mp4"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])  # index intact, media data cut
    with pytest.raises(CorruptMediaError, match=r"cut_fast\.mp4.*truncated"):
        probe_video(cut)
    for backend in ("pyav", "decord"):  # a reader trusting the header still fails cleanly on the lost frames
        src = FrameSource(kind="video", video_path=cut, names=[f"{i:05d}" for i in range(16)])
        with pytest.raises(CorruptMediaError, match=r"cut_fast\.mp4"):
            open_frames(src, backend).read([15])


def test_garbage_video_file(tmp_path):
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(CorruptMediaError, match=r"noise\.mp4"):
        probe_video(path)
    for backend in ("pyav", "decord"):
        src = FrameSource(kind="video", video_path=path, names=["00000"])
        with pytest.raises(CorruptMediaError, match=r"noise\.mp4"):
            open_frames(src, backend).read([0])


def test_unsupported_and_missing_files(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(CorruptMediaError, match=r"notes\.txt.*unsupported"):
        open_frames(txt)
    with pytest.raises(CorruptMediaError, match=r"notes\.txt.*unsupported"):
        probe_video(txt)
    with pytest.raises(MissingFileError, match=r"nope\.mp4"):
        open_frames(tmp_path / "nope.mp4")
    with pytest.raises(ValueError, match="unknown frame backend"):
        open_frames(txt, backend="opencv")


def test_empty_frame_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no frames here")
    with pytest.raises(MissingFileError, match=r"empty.*no images"):
        open_frames(tmp_path / "empty")
    with pytest.raises(MissingFileError, match="no frame images"):
        open_frames(FrameSource(kind="images", paths=[], names=[]))


def test_corrupt_and_missing_jpeg_frames(frame_folder):
    folder, frames = frame_folder
    Image.fromarray(frames[2]).save(folder / "00002.jpg", quality=90)
    (folder / "00002.png").unlink()
    data = (folder / "00002.jpg").read_bytes()
    (folder / "00002.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    reader = open_frames(folder)
    np.testing.assert_array_equal(reader.read([1])[0], frames[1])
    with pytest.raises(CorruptMediaError, match=r"00002\.jpg \(frame 2\)"):
        reader.read([1, 2])
    (folder / "00003.png").unlink()  # listed when the reader was made, gone now
    with pytest.raises(MissingFileError, match=r"00003\.png \(frame 3\)"):
        reader.read([3])
    (folder / "00002.jpg").write_bytes(b"")  # zero bytes
    with pytest.raises(CorruptMediaError, match=r"00002\.jpg \(frame 2\): cannot decode"):
        open_frames(folder).read([2])
    (folder / "00002.jpg").unlink()  # listed when the reader was made, gone now (JPEG path)
    with pytest.raises(MissingFileError, match=r"00002\.jpg \(frame 2\)"):
        reader.read([2])


@pytest.mark.parametrize("kind", ["png", "jpg"])
def test_frames_of_different_sizes(frame_folder, kind):
    folder, frames = frame_folder
    for i, f in ((0, frames[0]), (4, np.zeros((10, 12, 3), np.uint8))):
        (folder / f"{i:05d}.png").unlink()
        Image.fromarray(f).save(folder / f"{i:05d}.{kind}")
    with pytest.raises(CorruptMediaError, match=rf"00004\.{kind} \(frame 4\): size 10x12 differs from "
                                                rf".*00000\.{kind} \(frame 0\): 24x32"):
        open_frames(folder).read([0, 4])


@pytest.mark.parametrize("backend", ["pyav", "decord", "pil"])
def test_index_out_of_range(mp4, frame_folder, backend):
    path = frame_folder[0] if backend == "pil" else mp4[0]
    n = 5 if backend == "pil" else 16
    reader = open_frames(path, backend)
    with pytest.raises(ClipSamplingError, match=rf"{path.name}.*frame index {n} out of range.*{n} frames"):
        reader.read([0, n])
    with pytest.raises(ClipSamplingError, match="frame index -1 out of range"):
        reader.read([-1])
    with pytest.raises(ClipSamplingError, match="no frame indices"):
        reader.read([])


def test_backend_kind_mismatch(mp4, frame_folder):
    with pytest.raises(ValueError, match="'pil' reads frame folders"):
        open_frames(mp4[0], "pil")
    with pytest.raises(ValueError, match="frame folders use 'pil'"):
        open_frames(frame_folder[0], "pyav")
