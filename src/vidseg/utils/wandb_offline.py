"""Read an offline W&B run (`<run dir>/wandb/offline-run-*/run-*.wandb`) without syncing it: which history
keys were logged, which of them are images/videos, the config. Used by the tests and handy to check a run on a
machine without network.

File layout (wandb ≥ 0.16): a 7-byte header (":W&B", magic 0xBEE1, version 0), then LevelDB-log framing in
32 KiB blocks: each chunk is crc32 (4 bytes), length (2, little endian), type (1: full, 2: first, 3: middle,
4: last) and the payload; a block tail shorter than a chunk header is zero padding. Payloads are serialized
`wandb_internal_pb2.Record` protobufs.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 32768
CHUNK_HEADER = 7
FILE_HEADER = b":W&B"


def iter_record_bytes(path: Path) -> Iterator[bytes]:
    """Payload of every record of a `.wandb` file, chunks reassembled."""
    data = Path(path).read_bytes()
    if data[:4] != FILE_HEADER:
        raise ValueError(f"{path}: not a W&B run file (header {data[:4]!r})")
    pos, pending = 7, b""
    while pos + CHUNK_HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK_HEADER:
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos: pos + CHUNK_HEADER])
        if kind == 0 and length == 0:  # zero padding up to the end of the block
            pos += left_in_block
            continue
        payload = data[pos + CHUNK_HEADER: pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind == 1:
            yield payload
        elif kind == 2:
            pending = payload
        elif kind == 3:
            pending += payload
        elif kind == 4:
            yield pending + payload
            pending = b""
        else:
            raise ValueError(f"{path}: bad chunk type {kind} at byte {pos}")


@dataclass
class OfflineRun:
    """What an offline run holds: history rows ({key: value}), config keys, the run id."""

    run_id: str
    history: list[dict[str, Any]] = field(default_factory=list)
    config_keys: set[str] = field(default_factory=set)

    @property
    def history_keys(self) -> set[str]:
        return {k for row in self.history for k in row}

    def media_keys(self, kind: str = "image-file") -> dict[str, int]:
        """{history key: how many times it was logged} for values of W&B type `kind` (image-file,
        video-file)."""
        out: dict[str, int] = {}
        for row in self.history:
            for k, v in row.items():
                if isinstance(v, dict) and v.get("_type") == kind:  # stored as one JSON value
                    out[k] = out.get(k, 0) + 1
                elif k.endswith("/_type") and v == kind:  # stored flattened: <key>/_type, <key>/path, ...
                    base = k.removesuffix("/_type")
                    out[base] = out.get(base, 0) + 1
        return out


def read_offline_run(run_file: Path) -> OfflineRun:
    """Parse a `run-<id>.wandb` file."""
    from wandb.proto import wandb_internal_pb2

    run = OfflineRun(run_id=Path(run_file).stem.removeprefix("run-"))
    for payload in iter_record_bytes(Path(run_file)):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(payload)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            row = {}
            for item in rec.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            run.history.append(row)
        elif kind == "config":
            run.config_keys.update(item.key or "/".join(item.nested_key) for item in rec.config.update)
    return run


def offline_runs(output_dir: Path) -> list[Path]:
    """The `.wandb` files of the offline runs under a training run's output dir."""
    return sorted(Path(output_dir).glob("wandb/offline-run-*/run-*.wandb"))
