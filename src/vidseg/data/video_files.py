"""Video-file decoding behind `vidseg.data.video.open_frames`: container probing (PyAV demux, no decoding)
and the two video readers, PyAV (seek to keyframe + decode forward) and decord (`get_batch`).

Frame numbering of a video file is the presentation order of its video packets; `probe_video` counts
packets so the count is exact and cheap. Readers hold only a path until their first `read` and reopen
their decoder when used in another process, so they can be pickled into DataLoader workers.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidseg.data.records import ClipSamplingError, CorruptMediaError, MissingFileError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


@dataclass(frozen=True)
class VideoInfo:
    """What `probe_video` learns from a video file's container without decoding its frames."""

    num_frames: int
    height: int
    width: int
    fps: float | None


def is_video_file(path: Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def check_video_file(path: Path) -> Path:
    """Existing, non-empty file with a video extension, else MissingFileError / CorruptMediaError."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path}: video file does not exist")
    if not path.is_file():
        raise CorruptMediaError(f"{path}: expected a video file, found a folder or special file")
    if not is_video_file(path):
        raise CorruptMediaError(
            f"{path}: unsupported file type {path.suffix!r} (expected one of {', '.join(VIDEO_EXTENSIONS)})"
        )
    if path.stat().st_size == 0:
        raise CorruptMediaError(f"{path}: video file is empty (0 bytes)")
    return path


def check_indices(indices: Sequence[int], length: int, where: Path | str) -> list[int]:
    """Validate frame indices (ints in [0, length)); errors name the file and the bad index."""
    idx = [int(i) for i in indices]
    if not idx:
        raise ClipSamplingError(f"{where}: no frame indices requested")
    for i in idx:
        if i < 0 or i >= length:
            raise ClipSamplingError(f"{where}: frame index {i} out of range (video has {length} frames)")
    return idx


def _av_errors() -> tuple[type[BaseException], ...]:
    import av

    return (av.error.FFmpegError, OSError, ValueError, EOFError)


def _open_container(path: Path) -> Any:
    """av.open with errors mapped to CorruptMediaError; checks that a video stream exists."""
    import av

    try:
        container = av.open(str(path), mode="r")
    except _av_errors() as e:
        raise CorruptMediaError(f"{path}: cannot open video ({e})") from e
    if not container.streams.video:
        container.close()
        raise CorruptMediaError(f"{path}: file has no video stream")
    return container


def _packet_time(packet_or_frame: Any) -> int | None:
    return packet_or_frame.pts if packet_or_frame.pts is not None else packet_or_frame.dts


def _frame_table(path: Path, container: Any) -> tuple[np.ndarray, np.ndarray]:
    """Demux (no decoding) the first video stream: (sorted frame timestamps, keyframe flags in that order).

    A file whose header announces more frames than can be demuxed is truncated -> CorruptMediaError."""
    stream = container.streams.video[0]
    times: list[int] = []
    keys: list[bool] = []
    try:
        for packet in container.demux(stream):
            t = _packet_time(packet)
            if packet.size == 0 or t is None:
                continue
            times.append(int(t))
            keys.append(bool(packet.is_keyframe))
    except _av_errors() as e:
        raise CorruptMediaError(f"{path}: error while reading packet {len(times)} ({e})") from e
    if not times:
        raise CorruptMediaError(f"{path}: video stream contains no frames")
    declared = int(stream.frames or 0)
    if declared > len(times):
        raise CorruptMediaError(
            f"{path}: truncated video: header declares {declared} frames, only {len(times)} can be read"
        )
    order = np.argsort(np.asarray(times, dtype=np.int64), kind="stable")
    sorted_times = np.asarray(times, dtype=np.int64)[order]
    if np.any(np.diff(sorted_times) == 0):
        raise CorruptMediaError(f"{path}: several frames share one timestamp; frame order is ambiguous")
    return sorted_times, np.asarray(keys, dtype=bool)[order]


def probe_video(path: Path) -> VideoInfo:
    """Frame count (exact, by demuxing packets), size and frame rate of a video file; decodes nothing."""
    path = check_video_file(path)
    container = _open_container(path)
    try:
        stream = container.streams.video[0]
        height, width = int(stream.codec_context.height), int(stream.codec_context.width)
        rate = stream.average_rate or stream.guessed_rate
        times, _ = _frame_table(path, container)
    finally:
        container.close()
    if height <= 0 or width <= 0:
        raise CorruptMediaError(f"{path}: video stream has no valid frame size ({height}x{width})")
    return VideoInfo(num_frames=len(times), height=height, width=width, fps=float(rate) if rate else None)



class _LazyVideoReader:
    """Shared part of the video readers: path, length, lazy per-process opening, pickling without handles."""

    def __init__(self, path: Path, num_frames: int | None = None) -> None:
        self.path = Path(path)
        self._num_frames = num_frames
        self._handle: Any = None
        self._pid: int | None = None

    def __len__(self) -> int:
        if self._num_frames is None:
            self._num_frames = probe_video(self.path).num_frames
        return self._num_frames

    def _ensure_open(self) -> None:
        if self._handle is None or self._pid != os.getpid():
            self._handle = None  # a handle inherited through fork is never used
            self._open()
            self._pid = os.getpid()

    def _open(self) -> None:
        raise NotImplementedError

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_pid"] = None
        # decoder handles and iterators stay in the process that opened them
        return {k: v for k, v in state.items() if not k.startswith("_dec_") and k != "_stream"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_decoder()

    def _reset_decoder(self) -> None:
        pass

    def read(self, indices: Sequence[int]) -> np.ndarray:
        idx = check_indices(indices, len(self), self.path)
        self._ensure_open()
        wanted = sorted(set(idx))
        frames = self._decode(wanted)
        return np.stack([frames[i] for i in idx])

    def _decode(self, wanted: list[int]) -> dict[int, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        if self._handle is not None and hasattr(self._handle, "close"):
            self._handle.close()
        self._handle = None
        self._pid = None
        self._reset_decoder()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: nothing useful to do
            self.close()


class PyAVReader(_LazyVideoReader):
    """Video file decoded with PyAV: seek to the last keyframe at or before a requested frame and decode
    forward; the decoder position is kept between calls so sequential clips never decode a frame twice."""

    def __init__(self, path: Path, num_frames: int | None = None, threads: int = 1) -> None:
        super().__init__(path, num_frames)
        self.threads = threads
        self._reset_decoder()

    def _reset_decoder(self) -> None:
        self._dec_iter: Any = None
        self._dec_pos = -1  # index of the last decoded frame, -1 before any

    def _open(self) -> None:
        container = _open_container(self.path)
        stream = container.streams.video[0]
        stream.codec_context.thread_count = self.threads  # 0 = FFmpeg's choice
        if self.threads != 1:
            stream.thread_type = "AUTO"
        self._times, keys = _frame_table(self.path, container)
        self._time_to_index = {int(t): i for i, t in enumerate(self._times)}
        key_idx = np.flatnonzero(keys)
        self._keyframes = key_idx if key_idx.size and key_idx[0] == 0 else np.concatenate([[0], key_idx])
        self._handle, self._stream = container, stream
        self._reset_decoder()

    def _keyframe_before(self, index: int) -> int:
        return int(self._keyframes[np.searchsorted(self._keyframes, index, side="right") - 1])

    def _seek(self, index: int) -> None:
        key = self._keyframe_before(index)
        try:
            self._handle.seek(int(self._times[key]), stream=self._stream, backward=True, any_frame=False)
        except _av_errors() as e:
            raise CorruptMediaError(f"{self.path}: cannot seek to frame {index} ({e})") from e
        self._dec_iter = self._handle.decode(self._stream)
        self._dec_pos = -1

    def _decode(self, wanted: list[int]) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        for target in wanted:
            # Continue decoding when no keyframe lies between the decoder position and the target.
            pos = self._dec_pos
            if self._dec_iter is None or target <= pos or self._keyframe_before(target) > pos:
                self._seek(target)
            while True:
                try:
                    frame = next(self._dec_iter)
                except StopIteration:
                    self._dec_iter = None
                    raise CorruptMediaError(
                        f"{self.path}: frame {target} could not be decoded (stream ended; truncated file?)"
                    ) from None
                except _av_errors() as e:
                    self._dec_iter = None
                    raise CorruptMediaError(f"{self.path}: error decoding frame {target} ({e})") from e
                t = _packet_time(frame)
                i = self._time_to_index.get(int(t)) if t is not None else None
                if i is None:
                    continue  # a frame the demuxer did not list (e.g. discarded by an edit list)
                self._dec_pos = i
                if i == target:
                    out[target] = frame.to_ndarray(format="rgb24")
                    break
                if i > target:
                    self._dec_iter = None
                    raise CorruptMediaError(f"{self.path}: frame {target} is missing from the decoded stream")
        return out


class DecordReader(_LazyVideoReader):
    """Video file decoded with decord (package decord2): `get_batch` of the requested indices.

    decord returns padded rows for some widths (e.g. W=96: a (H, W, 4) array holding the 3*W bytes of each
    row plus alignment, and `get_batch` fails, dmlc/decord#336); such videos are read frame by frame and
    the padding is cut off."""

    def __init__(self, path: Path, num_frames: int | None = None, threads: int = 1) -> None:
        super().__init__(path, num_frames)
        self.threads = threads
        self._padded_rows = False  # set once get_batch is seen to fail on padded rows

    def _open(self) -> None:
        import decord

        check_video_file(self.path)
        try:
            self._handle = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=self.threads)
        except (decord.DECORDError, RuntimeError) as e:  # RuntimeError: "Error reading <path>..."
            raise CorruptMediaError(f"{self.path}: cannot open video with decord ({_first_line(e)})") from e
        self._decord_len = len(self._handle)

    def _frame(self, index: int) -> np.ndarray:
        arr = self._handle[index].asnumpy()
        h, w = arr.shape[:2]
        if arr.shape[2] != 3:
            arr = np.ascontiguousarray(arr.reshape(h, -1)[:, : 3 * w].reshape(h, w, 3))
        return arr

    def _decode(self, wanted: list[int]) -> dict[int, np.ndarray]:
        import decord

        if wanted[-1] >= self._decord_len:
            raise CorruptMediaError(
                f"{self.path}: frame {wanted[-1]} not decodable by decord (it sees {self._decord_len} frames)"
            )
        try:
            if not self._padded_rows:
                try:
                    batch = self._handle.get_batch(wanted).asnumpy()
                    if batch.shape[-1] == 3:
                        return dict(zip(wanted, batch))
                except decord.DECORDError:
                    # padded rows make get_batch fail; anything else fails again below and is reported
                    if self._handle[wanted[0]].shape[-1] == 3:
                        raise
                self._padded_rows = True
            return {i: self._frame(i) for i in wanted}
        except decord.DECORDError as e:
            raise CorruptMediaError(f"{self.path}: error decoding frames {wanted} ({_first_line(e)})") from e


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__
