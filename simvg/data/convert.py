"""Your own images, boxes and phrases in the SimVG layout: ``simvg convert``.

Input: a folder of images and a phrases file, one JSON object per line:

    {"image": "kitchen/001.jpg", "box": [x, y, w, h], "phrase": "the red mug", "split": "train"}
    {"ann_id": 1234, "phrase": "the mug left of the kettle", "split": "val"}

``box`` is in the image's pixels, COCO's [x, y, w, h] (``--box-format xyxy`` for corners);
``ann_id`` names an annotation of a COCO instances.json (``--coco``), which gives the box, the
image and the object's category (and every other object of the image, for
``loss.scene_category``). ``phrases`` (a list) may stand for ``phrase``. Lines that name the
same object (same image and box, or same ann_id) in the same split become one record with
several expressions.

Output: ``OUT/annotations/NAME/instances.json`` (split -> records) and ``OUT/images/NAME``,
a link to the image folder (or a copy of the images used, with ``copy``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simvg.data.check import inspect_image
from simvg.data.records import DataFormatError, is_box
from simvg.data.refer_layout import image_objects, load_coco

BOX_FORMATS = ("xywh", "xyxy")


@dataclass
class ConversionSummary:
    out: Path
    name: str
    records: dict[str, int] = field(default_factory=dict)
    expressions: dict[str, int] = field(default_factory=dict)
    images: int = 0


def _read_lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise FileNotFoundError(f"phrases file not found: {path}")
    lines = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{path}: not UTF-8 text: {err}") from err
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFormatError(f"{path}:{number}: not valid JSON: {err}") from err
        if not isinstance(entry, dict):
            raise DataFormatError(f"{path}:{number}: expected a JSON object, got {type(entry).__name__}")
        lines.append((number, entry))
    if not lines:
        raise DataFormatError(f"{path}: no phrases (one JSON object per line)")
    return lines


def _phrases(entry: dict, where: str) -> list[str]:
    phrases = entry.get("phrases", [entry["phrase"]] if "phrase" in entry else None)
    if not isinstance(phrases, list) or not phrases or not all(isinstance(p, str) and p.strip() for p in phrases):
        raise DataFormatError(f"{where}: needs 'phrase' (a non-empty string) or 'phrases' (a list of them)")
    return [p.strip() for p in phrases]


def _box_xywh(box: Any, box_format: str, where: str) -> list[float]:
    if not is_box(box) or not all(math.isfinite(v) for v in box):
        raise DataFormatError(f"{where}: 'box' must be 4 finite numbers, got {box!r}")
    x, y, a, b = (float(v) for v in box)
    w, h = (a - x, b - y) if box_format == "xyxy" else (a, b)
    if w <= 0 or h <= 0:
        raise DataFormatError(f"{where}: 'box' {box!r} ({box_format}) has no area")
    return [x, y, w, h]


def convert_phrases(
    phrases_file: str | Path,
    images: str | Path,
    out: str | Path,
    name: str,
    coco_file: str | Path | None = None,
    box_format: str = "xywh",
    copy: bool = False,
) -> ConversionSummary:
    """Write the SimVG layout for the phrases in ``phrases_file`` (see the module docstring)
    over the images in the folder ``images``; returns what was written. Errors name the
    phrases file's line."""
    phrases_file, images, out = Path(phrases_file), Path(images), Path(out)
    if box_format not in BOX_FORMATS:
        raise ValueError(f"box format must be one of {', '.join(BOX_FORMATS)}, got {box_format!r}")
    if not images.is_dir():
        raise FileNotFoundError(f"image folder not found: {images}")
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"dataset name must be a plain folder name, got {name!r}")
    coco = load_coco(Path(coco_file)) if coco_file is not None else None
    sizes: dict[str, tuple[int, int]] = {}
    records: dict[str, dict[tuple, dict]] = {}
    for number, entry in _read_lines(phrases_file):
        where = f"{phrases_file}:{number}"
        split = entry.get("split")
        if not isinstance(split, str) or not split.strip():
            raise DataFormatError(f"{where}: needs 'split' (e.g. \"train\", \"val\")")
        phrases = _phrases(entry, where)
        extra: dict[str, Any] = {}
        if "ann_id" in entry:
            if coco is None:
                raise DataFormatError(f"{where}: 'ann_id' needs the COCO instances file (--coco)")
            ann = coco.anns.get(entry["ann_id"])
            if ann is None:
                raise DataFormatError(f"{where}: ann_id {entry['ann_id']!r} is not in {coco_file}")
            info = coco.imgs.get(ann["image_id"])
            if info is None or "file_name" not in info:
                raise DataFormatError(f"{where}: {coco_file} has no image entry with a file_name for image_id "
                                      f"{ann['image_id']!r}")  # fmt: skip
            file_name, bbox = info["file_name"], _box_xywh(ann.get("bbox"), "xywh", f"{where} (ann_id {ann['id']})")
            image_id, key = ann["image_id"], ("ann", ann["id"])
            extra = {"category_id": ann.get("category_id"), "objects": image_objects(coco, ann["image_id"])}
        elif "box" in entry:
            file_name = entry.get("image")
            if not isinstance(file_name, str) or not file_name:
                raise DataFormatError(f"{where}: a 'box' needs its 'image' (a file name inside {images})")
            bbox = _box_xywh(entry["box"], box_format, where)
            image_id, key = file_name, ("box", file_name, *bbox)
        else:
            raise DataFormatError(f"{where}: needs 'box' and 'image', or 'ann_id' (with --coco)")
        path = images / file_name
        if Path(file_name).is_absolute() or ".." in Path(file_name).parts:
            raise DataFormatError(f"{where}: image {file_name!r} must be a path inside {images}")
        if file_name not in sizes:
            found = inspect_image(path, decode=False)
            if found.problem is not None:
                raise DataFormatError(f"{where}: image {path}: {found.problem}")
            sizes[file_name] = (found.width, found.height)
        width, height = sizes[file_name]
        x, y, w, h = bbox
        if x >= width or y >= height or x + w <= 0 or y + h <= 0:
            raise DataFormatError(f"{where}: box {entry.get('box', bbox)!r} lies outside the {width}x{height} image {path}")
        split_records = records.setdefault(split.strip(), {})
        if key not in split_records:
            split_records[key] = {"ref_id": None, "image_id": image_id, "file_name": file_name, "bbox": bbox,
                                  "width": width, "height": height, "expressions": [], **extra}  # fmt: skip
        split_records[key]["expressions"] += [p for p in phrases if p not in split_records[key]["expressions"]]
    ref_id = 0
    layout: dict[str, list[dict]] = {}
    for split, by_key in records.items():
        layout[split] = []
        for record in by_key.values():
            record["ref_id"] = ref_id
            ref_id += 1
            layout[split].append(record)
    _write(out, name, layout, images, sorted(sizes), copy)
    return ConversionSummary(
        out=out, name=name, records={s: len(r) for s, r in layout.items()},
        expressions={s: sum(len(r["expressions"]) for r in rs) for s, rs in layout.items()}, images=len(sizes),
    )  # fmt: skip


def _write(out: Path, name: str, layout: dict, images: Path, used: list[str], copy: bool) -> None:
    annotations = out / "annotations" / name / "instances.json"
    target = out / "images" / name
    if annotations.exists() or target.exists() or target.is_symlink():
        raise ValueError(f"{out} already holds a dataset '{name}' ({annotations} or {target}): choose another "
                              f"--name or --out")  # fmt: skip
    annotations.parent.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        for file_name in used:
            (target / file_name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(images / file_name, target / file_name)
    else:
        os.symlink(images.resolve(), target, target_is_directory=True)
    staging = annotations.with_name(".instances.json.tmp")
    staging.write_text(json.dumps(layout, indent=1))
    os.replace(staging, annotations)
