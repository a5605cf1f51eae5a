"""What reading a label file found (its track ids), remembered across reads of a dataset.

KITTI-STEP, raw VIPSeg and the released Cityscapes-VPS GT have no annotation JSON that lists the tracks, so a video's
track list comes from decoding every label PNG at read time. VIPSeg train has ~67k masks at 720p, about 12 ms each:
some 13 minutes on one core, at every read. `ScanCache` keeps each result under the BLAKE2 digest of the file's
bytes, so a later read decodes only files whose content changed. Hashing costs a read of the files, not their
decoding. Results live in one JSON per (format, dataset folder, split, reader settings), under
``$VIDSEG_SCAN_CACHE``, else ``~/.cache/vidseg/scans``; ``VIDSEG_SCAN_CACHE=off`` turns the cache off.
A cache file that cannot be read or written is a warning, never an error: the read goes on without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, TypeVar

from vidseg.data.formats.common import write_json_atomic

SCAN_CACHE_ENV = "VIDSEG_SCAN_CACHE"
_OFF = ("0", "off", "false", "no", "none")
_VERSION = 2  # 2: entries hold the scan settings

T = TypeVar("T")


class ScanCacheWarning(RuntimeWarning):
    """The scan cache could not be used (unreadable or unwritable); the read went on without it."""


def scan_cache_dir() -> Path | None:
    """Where scan caches live: ``$VIDSEG_SCAN_CACHE``, else ``~/.cache/vidseg/scans``; None when turned off."""
    env = os.environ.get(SCAN_CACHE_ENV)
    if env is not None and env.strip().lower() in _OFF:
        return None
    return Path(env) if env else Path.home() / ".cache" / "vidseg" / "scans"


def one_file(path: Path) -> tuple[Path]:
    """`files_of` for items that are one label file."""
    return (path,)


def _well_formed(entry: Any) -> bool:
    """A cache entry: [content digest, scan settings (JSON text), result]."""
    return isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str) and isinstance(entry[1], str)


def file_digest(paths: Sequence[Path]) -> str:
    """BLAKE2b (128 bit) of the bytes of `paths`, in order, each preceded by its length."""
    h = hashlib.blake2b(digest_size=16)
    for path in paths:
        data = Path(path).read_bytes()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


class ScanCache:
    """Results of a scan function per label file (or group of files) of one dataset split, by content digest.
    `key` names what the results depend on besides the files (the format, folder, split, vocabulary); a scan's own
    arguments (the size the label must have) are part of each entry (`settings_of`). Results must be JSON values
    that compare equal after a JSON round trip (lists, not tuples)."""

    def __init__(self, fmt: str, key: dict[str, Any]) -> None:
        folder = scan_cache_dir()
        blob = json.dumps({"format": fmt, "version": _VERSION, **key}, sort_keys=True, default=str)
        name = f"{fmt}-{hashlib.blake2b(blob.encode(), digest_size=8).hexdigest()}.json"
        self.path = None if folder is None else folder / name
        self._blob = blob
        self._entries: dict[str, list[Any]] = self._load()
        self._changed = False
        self.hits = self.misses = 0

    def _load(self) -> dict[str, list[Any]]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("key") != self._blob or not isinstance(data.get("files"), dict):
                raise ValueError("not a scan cache of this dataset")
        except (OSError, ValueError) as e:
            warnings.warn(f"{self.path}: unusable scan cache ({e}); every label file is decoded again",
                          ScanCacheWarning, stacklevel=3)  # fmt: skip
            return {}
        entries = {name: e for name, e in data["files"].items() if _well_formed(e)}
        if len(entries) != len(data["files"]):
            warnings.warn(f"{self.path}: {len(data['files']) - len(entries)} malformed scan cache entries; their "
                          "label files are decoded again", ScanCacheWarning, stacklevel=3)  # fmt: skip
        return entries

    def map(
        self,
        pool: Executor,
        scan: Callable[[Any], T],
        items: Sequence[Any],
        files_of: Callable[[Any], Sequence[Path]],
        settings_of: Callable[[Any], Any] = lambda item: None,
    ) -> list[T]:
        """[scan(item) for item in items], taken from the cache for items whose files (`files_of(item)`) have the
        bytes, and whose scan the settings (`settings_of(item)`, a JSON value), they had when scanned; the others
        are scanned on `pool` (their errors propagate)."""
        if self.path is None:
            return list(pool.map(scan, items))
        files = [tuple(Path(f) for f in files_of(item)) for item in items]
        names = ["|".join(str(f.resolve()) for f in group) for group in files]
        settings = [json.dumps(settings_of(item), sort_keys=True) for item in items]
        digests = list(pool.map(file_digest, files))
        out: list[Any] = [None] * len(items)
        todo = []
        for k, name in enumerate(names):
            entry = self._entries.get(name)
            if entry is not None and entry[0] == digests[k] and entry[1] == settings[k]:
                out[k] = entry[2]
            else:
                todo.append(k)
        for k, result in zip(todo, pool.map(scan, [items[k] for k in todo]), strict=True):
            out[k] = result
            self._entries[names[k]] = [digests[k], settings[k], result]
            self._changed = True
        self.hits += len(items) - len(todo)
        self.misses += len(todo)
        return out

    def __enter__(self) -> ScanCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.save()  # also when a file failed: the results of the files scanned before it stay valid

    def save(self) -> None:
        """Write the cache when new results were added (atomically; a failure is a warning)."""
        if self.path is None or not self._changed:
            return
        try:
            write_json_atomic(self.path, {"key": self._blob, "files": self._entries})
            self._changed = False
        except OSError as e:
            warnings.warn(f"{self.path}: cannot write the scan cache ({e}); the next read decodes again",
                          ScanCacheWarning, stacklevel=2)  # fmt: skip
