"""One module per official format. Each module defines:

- ``read(root, split, **options) -> DatasetRecord``: reads the official layout as it is, validating as it
  loads (errors name the file and field); decodes no frame.
- ``write_ground_truth(root, split, videos: list[GroundTruthVideo], categories, **options)``: writes GT in
  the official layout (used by the synthetic generator and tests).
- ``write_results(out, predictions: list[VideoPrediction], dataset: DatasetRecord, **options) -> Path``:
  writes the official result/submission format.
- ``read_results(path, dataset: DatasetRecord) -> list[VideoPrediction]``: reads a result file/folder back
  (the metrics CLI and round-trip tests use it).

``get_format(name)`` returns the module; ``FORMATS`` lists the keys.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from vidseg.data.records import AnnotationFormatError

FORMATS: dict[str, str] = {
    "ytvis": "vidseg.data.formats.ytvis",  # YouTube-VIS 2019/2021 and OVIS
    "davis": "vidseg.data.formats.davis",
    "ytvos": "vidseg.data.formats.ytvos",
    "burst": "vidseg.data.formats.burst",
    "kitti_step": "vidseg.data.formats.kitti_step",
    "cityscapes_vps": "vidseg.data.formats.cityscapes_vps",
    "vipseg": "vidseg.data.formats.vipseg",
    "vspw": "vidseg.data.formats.vspw",
    "video": "vidseg.data.formats.video_folder",  # unannotated video file or frame folder
}


def get_format(name: str) -> ModuleType:
    """The reader/writer module of format `name`; a clear error lists the known formats."""
    if name not in FORMATS:
        raise AnnotationFormatError(f"unknown dataset format {name!r}; known formats: {sorted(FORMATS)}")
    return importlib.import_module(FORMATS[name])
