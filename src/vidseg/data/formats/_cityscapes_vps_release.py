"""Cityscapes-VPS ground truth as released (``train_gt.zip`` / ``val_gt.zip``): ``<split>/cls/`` colour PNGs and
``<split>/inst/`` instance-id PNGs, with the frame list of ``panoptic_im_<split>_city_vps.json``.

mcahny/vps turns these into ``panoptic_inst/`` (``create_panoptic_labels.py``) and then into ``panoptic_video/`` +
``panoptic_gt_<split>_city_vps.json`` (``create_panoptic_video_labels.py``). Here the same rules are applied in
memory, so a split reads the same from either layout (track ids aside):
- a pixel's class is the category whose ``color`` its cls pixel has (an alpha channel is ignored); any other colour
  is void;
- stuff pixels keep their class;
- every inst value >= 1000 is one instance. Its class is the most frequent cls colour under it (ties go to the
  smallest colour value r + 256 g + 65536 b). If that colour is a thing class, all of the instance's pixels
  become the instance. If not, the instance is dropped: its stuff-coloured pixels keep their class and the rest
  stay void;
- thing pixels that no instance takes (inst < 1000: Cityscapes' crowd) are void, because the official panoptic
  GT has no crowd segments;
- an instance's track id is ``class * 1000 + inst % 1000``, and the same id in two frames of a video is one
  track (the official tube identity).
A label file pairs with its image by the image id, i.e. the file name without its last two ``_`` parts
(``<id>_gtFine_color.png``, ``<id>_gtFine_instanceIds.png``, ``<id>_final_mask.png``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from vidseg.data.formats._cityscapes_vps_frames import images_json_path, parse_images
from vidseg.data.formats._cityscapes_vps_parse import parse_categories
from vidseg.data.formats.common import load_json, read_png, require_dir, require_key
from vidseg.data.formats.scan_cache import ScanCache
from vidseg.data.formats.vps_common import cityscapes_categories
from vidseg.data.records import IGNORE_LABEL, AnnotationFormatError, Category, FrameLabels, MissingFileError

INSTANCE_BASE = 1000  # inst values from here on are instances (Cityscapes' label * 1000 + k)
CLS_SUFFIX = "_gtFine_color.png"
INST_SUFFIX = "_gtFine_instanceIds.png"
VOID = -1


class ReleaseFrame(NamedTuple):
    """One annotated frame of the released GT: its image and label files and the track ids it holds."""

    image_id: str
    file_name: str
    height: int
    width: int
    cls: Path
    inst: Path
    track_ids: tuple[int, ...]


class ColourTable(NamedTuple):
    """Category colours as sorted packed values r + 256 g + 65536 b, with each one's category id and thingness."""

    colours: np.ndarray
    category_ids: np.ndarray
    is_thing: np.ndarray

    @classmethod
    def of(cls, categories: list[Category], where: str) -> ColourTable:
        packed: dict[int, Category] = {}
        for c in categories:
            if c.color is None or len(c.color) != 3:
                raise AnnotationFormatError(
                    f"{where}: category {c.id} ({c.name}) has no RGB 'color'; the cls/ PNGs are read by colour"
                )
            value = int(c.color[0]) + 256 * int(c.color[1]) + 65536 * int(c.color[2])
            if value in packed:
                raise AnnotationFormatError(f"{where}: categories {packed[value].id} and {c.id} share colour {c.color}")
            packed[value] = c
        keys = sorted(packed)
        return cls(np.array(keys, dtype=np.int64), np.array([packed[k].id for k in keys], dtype=np.int64),
                   np.array([packed[k].isthing for k in keys], dtype=bool))  # fmt: skip


def panoptic_map(cls_path: Path, inst_path: Path, size: tuple[int, int], table: ColourTable) -> np.ndarray:
    """int64 map of one frame: stuff class id, ``class * 1000 + inst % 1000`` for instances, VOID (-1) elsewhere."""
    rgb = read_png(cls_path, channels=3, size=size)
    inst = read_png(inst_path, channels=1, size=size)
    colour = rgb[..., 0].astype(np.int64)
    colour |= rgb[..., 1].astype(np.int64) << 8
    colour |= rgb[..., 2].astype(np.int64) << 16
    slot = np.searchsorted(table.colours, colour).clip(max=len(table.colours) - 1)
    known = table.colours[slot] == colour
    pan = np.where(known & ~table.is_thing[slot], table.category_ids[slot], VOID)
    objects = inst >= INSTANCE_BASE
    if objects.any():
        ids, obj = _dense_ids(inst[objects])
        code, code_colour = _colour_codes(colour[objects], slot[objects], known[objects], table)
        majority = _majority_colours(obj, code, code_colour, len(ids))
        m_slot = np.searchsorted(table.colours, majority).clip(max=len(table.colours) - 1)
        taken = (table.colours[m_slot] == majority) & table.is_thing[m_slot]
        value = table.category_ids[m_slot] * INSTANCE_BASE + ids % INSTANCE_BASE
        pan[objects] = np.where(taken[obj], value[obj], pan[objects])
    return pan


def _majority_colours(obj: np.ndarray, code: np.ndarray, code_colour: np.ndarray, n: int) -> np.ndarray:
    """Each of the `n` instances' most frequent raw colour (unknown colours count apart; ties: the smallest colour),
    from a pixel's instance index `obj` and colour code `code`."""
    pair = obj.astype(np.int64) * len(code_colour) + code
    if n * len(code_colour) <= 4 * len(pair):  # a dense count table
        counts = np.bincount(pair, minlength=n * len(code_colour)).reshape(n, len(code_colour))
        tied = counts == counts.max(axis=1, keepdims=True)
        return code_colour[np.argmin(np.where(tied, code_colour, np.iinfo(np.int64).max), axis=1)]
    pairs, counts = np.unique(pair, return_counts=True)  # many colours (noisy PNGs): the pairs that occur
    p_obj, p_colour = pairs // len(code_colour), code_colour[pairs % len(code_colour)]
    order = np.lexsort((p_colour, -counts, p_obj))  # per instance: most pixels first, then the smallest colour
    first = order[np.r_[True, p_obj[order][1:] != p_obj[order][:-1]]]
    return p_colour[first]


def _dense_ids(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values as int64, index of each value among them); without a sort for 16-bit values."""
    if values.max() >= 1 << 16:
        ids, index = np.unique(values, return_inverse=True)
        return ids.astype(np.int64), index.ravel()
    present = np.bincount(values, minlength=1 << 16) > 0
    ids = np.flatnonzero(present)
    lut = np.cumsum(present) - 1
    return ids.astype(np.int64), lut[values]


def _colour_codes(
    colour: np.ndarray, slot: np.ndarray, known: np.ndarray, table: ColourTable
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Small codes for raw colours: a category colour's table slot, then one code per other colour; returns
    (code per pixel, colour per code)."""
    other, other_index = np.unique(colour[~known], return_inverse=True)
    code = slot.copy()
    code[~known] = len(table.colours) + other_index.ravel()
    return code, np.concatenate([table.colours, other])


def decode_cls_inst(
    cls_path: Path, *, inst_path: Path, size: tuple[int, int], table: ColourTable
) -> FrameLabels:  # fmt: skip
    """FrameLabels of one released frame: instance masks by track id, semantic map, void where no class."""
    pan = panoptic_map(cls_path, inst_path, size, table)
    semantic = np.where(pan >= INSTANCE_BASE, pan // INSTANCE_BASE, pan)
    void = pan == VOID
    masks = {int(t): pan == t for t in np.unique(pan[pan >= INSTANCE_BASE]).tolist()}
    return FrameLabels(masks=masks, semantic=np.where(void, IGNORE_LABEL, semantic).astype(np.int32), void=void)


def _label_files(folder: Path, images: dict[str, tuple[str, int, int]], where: str, suffix: str) -> dict[str, Path]:
    """{image id: label PNG} of one of cls/ and inst/; every PNG names an image of `where` and every image has one."""
    found: dict[str, Path] = {}
    for path in sorted(require_dir(folder, f"Cityscapes-VPS {folder.name} folder of the released GT").iterdir()):
        if path.suffix.lower() != ".png":
            continue
        iid = path.name.rsplit("_", 2)[0]
        if iid not in images:
            raise AnnotationFormatError(f"{path}: image id {iid!r} is not an image of {where}")
        if iid in found:
            raise AnnotationFormatError(
                f"{path}: a second {folder.name} PNG for image {iid} (first: {found[iid].name})"
            )
        found[iid] = path
    missing = sorted(set(images) - set(found))
    if missing:
        raise MissingFileError(
            f"{folder / (missing[0] + suffix)}: {folder.name} PNG of image {missing[0]} (listed in {where}) "
            f"does not exist ({len(missing)} of {len(images)} missing)"
        )
    return found


def _scan(frame: tuple[str, Path, Path, tuple[int, int]], table: ColourTable) -> list[int]:
    _, cls_path, inst_path, size = frame
    pan = panoptic_map(cls_path, inst_path, size, table)
    return [int(t) for t in np.unique(pan[pan >= INSTANCE_BASE]).tolist()]


def _label_pair(frame: tuple[str, Path, Path, tuple[int, int]]) -> tuple[Path, Path]:
    return frame[1], frame[2]


def read_release(
    root: Path, split: str, *, num_workers: int = 4
) -> tuple[Path, list[Category], ColourTable, list[ReleaseFrame]]:
    """(frame-list JSON, categories, their colours, frames sorted by cls file name) of a split's released GT.
    Every label PNG is decoded here, for validation and the track list, unless the scan cache holds its result
    from an earlier read of the same bytes; categories and colours come from the JSON when it lists them, else
    they are the 19 Cityscapes classes."""
    root = Path(root)
    im_path = images_json_path(root, split)
    if not im_path.is_file():
        raise MissingFileError(
            f"{im_path}: the frame list of the released GT ({root / split}/cls, inst) does not exist"
        )
    data = load_json(im_path)
    where = str(im_path)
    raw_cats = data.get("categories") if isinstance(data, dict) else None
    cats = parse_categories(raw_cats, where) if raw_cats else cityscapes_categories(range(11, 19))
    table = ColourTable.of(cats, where)
    images = parse_images(require_key(data, "images", where, list), where)
    if not images:
        raise AnnotationFormatError(f"{where}: 'images' is empty")
    cls_files = _label_files(root / split / "cls", images, where, CLS_SUFFIX)
    inst_files = _label_files(root / split / "inst", images, where, INST_SUFFIX)
    order = sorted(images, key=lambda i: cls_files[i].name)
    jobs = [(i, cls_files[i], inst_files[i], images[i][1:]) for i in order]
    key = {"root": str(root.resolve()), "split": split, "colours": [a.tolist() for a in table]}
    with ScanCache("cityscapes_vps", key) as cache, ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        scans = cache.map(pool, partial(_scan, table=table), jobs, _label_pair, lambda job: list(job[3]))
    frames = [
        ReleaseFrame(i, *images[i], cls_files[i], inst_files[i], tuple(tids)) for i, tids in zip(order, scans)
    ]
    return im_path, cats, table, frames


def release_decoder(frame: ReleaseFrame, table: ColourTable) -> partial[FrameLabels]:
    """The lazy decoder of one frame (called with its cls PNG), picklable for DataLoader workers."""
    return partial(decode_cls_inst, inst_path=frame.inst, size=(frame.height, frame.width), table=table)


def write_release_frame(
    root: Path, split: str, image_id: str, semantic: np.ndarray, instance: np.ndarray, categories: list[Category]
) -> None:
    """Write one frame's cls (RGB colour, void black) and inst (uint16: ``class * 1000 + track`` on tracks, the
    class elsewhere, as Cityscapes' instanceIds) PNGs. Track ids must be below 1000 and black no category colour."""
    table = ColourTable.of(categories, f"{root} (Cityscapes-VPS release writer)")
    if (table.colours == 0).any():
        raise AnnotationFormatError(f"{root}: a category has colour (0, 0, 0), which the writer uses for void")
    if instance.max(initial=0) >= INSTANCE_BASE:
        raise AnnotationFormatError(f"{root}: {image_id}: track id {int(instance.max())} does not fit below 1000")
    lut = np.zeros(max(IGNORE_LABEL, int(table.category_ids.max())) + 1, dtype=np.int64)
    lut[table.category_ids] = table.colours
    packed = lut[semantic]
    rgb = np.stack([packed & 255, (packed >> 8) & 255, packed >> 16], axis=-1).astype(np.uint8)
    inst = np.where(instance > 0, semantic.astype(np.int64) * INSTANCE_BASE + instance, semantic)
    if inst.max(initial=0) > np.iinfo(np.uint16).max:
        raise AnnotationFormatError(f"{root}: {image_id}: instance value {int(inst.max())} does not fit a 16-bit PNG")
    inst = inst.astype(np.uint16)
    for folder, suffix, array in (("cls", CLS_SUFFIX, rgb), ("inst", INST_SUFFIX, inst)):
        path = Path(root) / split / folder / f"{image_id}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)
