"""Cityscapes-VPS frame lists: the ``images`` of a panoptic JSON (annotated frames) and the official
``im_all_info_<split>_city_vps.json`` + ``<split>/img_all/`` (all frames of every video).

mcahny/vps ``prepare_data/fetch_city_images.py`` stores each img_all frame under its ``file_name`` from
``im_all_info_<split>_city_vps.json``: a raw Cityscapes-sequence name (``frankfurt_000000_001736_leftImg8bit.png``,
no ``<vid>_<frame>_`` prefix); the numeric image id there is ``video * 10000 + frame``. Annotated frames
(``0005_0025_frankfurt_000000_001736_leftImg8bit.png``) are matched to them by the Cityscapes part of the name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidseg.data.formats.common import load_json, require_dir, require_file, require_key
from vidseg.data.records import AnnotationFormatError

_PREFIX = re.compile(r"^\d{4}_\d{4}_")


def im_all_info_path(root: Path, split: str) -> Path:
    return Path(root) / f"im_all_info_{split}_city_vps.json"


def images_json_path(root: Path, split: str) -> Path:
    """``panoptic_im_<split>_city_vps.json``: the annotated frames (the only frame list of the test split)."""
    return Path(root) / f"panoptic_im_{split}_city_vps.json"


def cityscapes_key(file_name: str) -> str:
    """``<city>_<seq>_<frame>`` of a frame file name (``_leftImg8bit.png`` / ``_newImg8bit.png`` suffix
    dropped), with or without the ``<vid>_<frame>_`` prefix."""
    stem = file_name.rsplit("_", 1)[0] if "_" in file_name else Path(file_name).stem
    return _PREFIX.sub("", stem, count=1)


def parse_images(raw: Any, where: str) -> dict[str, tuple[str, int, int]]:
    """``images: [{id, file_name, height, width}]`` (string ids) -> {id: (file_name, height, width)}."""
    if not isinstance(raw, list):
        raise AnnotationFormatError(f"{where}: 'images' must be a list")
    images: dict[str, tuple[str, int, int]] = {}
    for i, im in enumerate(raw):
        w = f"{where}: images[{i}]"
        iid = require_key(im, "id", w, str)
        if iid in images:
            raise AnnotationFormatError(f"{w}: duplicate image id {iid!r}")
        images[iid] = (require_key(im, "file_name", w, str), require_key(im, "height", w, int),
                       require_key(im, "width", w, int))  # fmt: skip
    return images


@dataclass
class AllFrames:
    """All frames per video from ``im_all_info_<split>_city_vps.json`` (files in ``<split>/img_all``)."""

    json_path: Path
    folder: Path
    videos: dict[str, list[tuple[int, str]]]  # "%04d" video -> [(frame number, file_name)] sorted by frame

    @classmethod
    def load(cls, root: Path, split: str) -> AllFrames:
        json_path = im_all_info_path(root, split)
        data = load_json(json_path)
        where = str(json_path)
        folder = require_dir(Path(root) / split / "img_all", "Cityscapes-VPS img_all folder")
        videos: dict[str, list[tuple[int, str]]] = {}
        seen: set[int] = set()
        for i, im in enumerate(require_key(data, "images", where, list)):
            w = f"{where}: images[{i}]"
            num = require_key(im, "id", w, int)
            if isinstance(num, bool) or num < 0:
                raise AnnotationFormatError(f"{w}: 'id' must be a non-negative int (video * 10000 + frame)")
            if num in seen:
                raise AnnotationFormatError(f"{w}: duplicate image id {num}")
            seen.add(num)
            videos.setdefault(f"{num // 10000:04d}", []).append((num % 10000, require_key(im, "file_name", w, str)))
        for frames in videos.values():
            frames.sort()
        return cls(json_path, folder, videos)

    def frames_of(self, vid: str, annotated: list[str]) -> tuple[list[Path], list[int]]:
        """Paths of all frames of video `vid` (frame order) and the position of each annotated file name."""
        if vid not in self.videos:
            raise AnnotationFormatError(f"{self.json_path}: no image with id // 10000 == {int(vid)} (video {vid})")
        names = [name for _, name in self.videos[vid]]
        index: dict[str, int] = {}
        for pos, name in enumerate(names):
            key = cityscapes_key(name)
            if key in index:
                raise AnnotationFormatError(f"{self.json_path}: video {vid} lists frame {key} twice")
            index[key] = pos
        positions = []
        for file_name in annotated:
            pos = index.get(cityscapes_key(file_name))
            if pos is None:
                raise AnnotationFormatError(
                    f"{self.json_path}: video {vid} has no frame {cityscapes_key(file_name)} "
                    f"(annotated frame {file_name})"
                )
            positions.append(pos)
        paths = [require_file(self.folder / name, f"img_all frame of video {vid}") for name in names]
        return paths, positions
