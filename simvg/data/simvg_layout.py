"""Reader for the SeqTR/SimVG layout: ``data_root/annotations/<dataset>/instances.json``.

The file is a dict split -> list of records ``{image_id, bbox (COCO xywh), expressions,
height, width, ...}``. Images resolve as SimVG does: COCO-based datasets to
``images/mscoco/train2014/COCO_train2014_%012d.jpg``, ReferItGame to
``images/saiapr_tc-12/%d.jpg``, Flickr30k to ``images/flickr30k/%d.jpg``; a record with a
``file_name`` field (e.g. SynthRef, or a user's own data) resolves to
``images/<dataset>/<file_name>``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from simvg.data.records import DataFormatError, GroundingRecord, check_box, is_box, xywh_to_xyxy

COCO_TEMPLATE = "mscoco/train2014/COCO_train2014_%012d.jpg"
IMAGE_TEMPLATES = {
    "refcoco-unc": COCO_TEMPLATE,
    "refcocoplus-unc": COCO_TEMPLATE,
    "refcocog-umd": COCO_TEMPLATE,
    "refcocog-google": COCO_TEMPLATE,
    "referitgame-berkeley": "saiapr_tc-12/%d.jpg",
    "flickr30k": "flickr30k/%d.jpg",
}
MIXED_TEMPLATES = {"coco": COCO_TEMPLATE, "flickr": "flickr30k/%d.jpg", "referit": "saiapr_tc-12/%d.jpg"}


def annotation_file(data_root: Path, dataset: str) -> Path:
    return data_root / "annotations" / dataset / "instances.json"


def _image_relpath(dataset: str, raw: dict[str, Any]) -> str:
    if "file_name" in raw:
        return f"{dataset}/{raw['file_name']}"
    image_id = int(raw["image_id"])
    if dataset in IMAGE_TEMPLATES:
        return IMAGE_TEMPLATES[dataset] % image_id
    if dataset == "mixed":
        source = str(raw.get("data_source", "coco"))
        for key, template in MIXED_TEMPLATES.items():
            if key in source:
                return template % image_id
    raise KeyError("file_name")


def _parse_record(raw: Any, index: int, dataset: str, split: str, path: Path, image_root: Path) -> GroundingRecord:
    ident = raw.get("ref_id", index) if isinstance(raw, dict) else index
    where = f"{path}: split '{split}', record {index} (ref_id {ident})"
    if not isinstance(raw, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    missing = [k for k in ("image_id", "bbox", "expressions") if k not in raw]
    if missing:
        raise DataFormatError(f"{where}: missing field(s) {', '.join(missing)}")
    bbox = raw["bbox"]
    expressions = raw["expressions"]
    if (
        not isinstance(expressions, list)
        or not expressions
        or not all(isinstance(e, str) and e.strip() for e in expressions)
    ):
        raise DataFormatError(f"{where}: expressions must be a non-empty list of non-empty strings")
    types = raw.get("expression_types")
    if types is not None and (not isinstance(types, list) or len(types) != len(expressions)):
        raise DataFormatError(f"{where}: expression_types must be a list parallel to expressions")
    for key in ("width", "height"):
        value = raw.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise DataFormatError(f"{where}: '{key}' must be a positive integer, got {value!r}")
    check_box(bbox, raw["width"], raw["height"], where)
    _check_objects(raw.get("objects"), where)
    try:
        relpath = _image_relpath(dataset, raw)
    except (KeyError, TypeError, ValueError) as err:
        raise DataFormatError(
            f"{where}: cannot resolve the image path; add a 'file_name' field ({err})"
        ) from err
    known = {"image_id", "bbox", "expressions", "expression_types", "width", "height", "ref_id", "file_name"}
    return GroundingRecord(
        image_path=image_root / relpath,
        box_xyxy=xywh_to_xyxy(bbox),
        expressions=[e.strip() for e in expressions],
        ref_id=ident,
        image_id=raw["image_id"],
        width=raw["width"],
        height=raw["height"],
        expression_types=types,
        dataset=dataset,
        split=split,
        extra={k: v for k, v in raw.items() if k not in known},
    )


def _check_objects(objects: Any, where: str) -> None:
    """The optional ``objects`` field (every object of the image, SynthRef): a list of JSON
    objects, each with a ``bbox`` of 4 numbers [x, y, w, h]."""
    if objects is None:
        return
    if not isinstance(objects, list):
        raise DataFormatError(f"{where}: 'objects' must be a list of objects, got {type(objects).__name__}")
    for k, obj in enumerate(objects):
        if not isinstance(obj, dict) or not is_box(obj.get("bbox")):
            shown = obj.get("bbox") if isinstance(obj, dict) else obj
            raise DataFormatError(f"{where}: objects[{k}] needs a 'bbox' of 4 numbers [x, y, w, h], got {shown!r}")


def read_split_names(path: Path) -> list[str]:
    return list(_load_json(path))


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{path}: not UTF-8 text: {err}") from err
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise DataFormatError(f"{path}: expected a JSON object mapping split names to record lists")
    return data


def read_simvg_layout(data_root: Path, dataset: str, split: str, image_root: Path) -> list[GroundingRecord]:
    """Read one split of ``data_root/annotations/<dataset>/instances.json``."""
    path = annotation_file(data_root, dataset)
    data = _load_json(path)
    if split not in data:
        raise DataFormatError(f"{path}: no split '{split}'; available splits: {', '.join(data)}")
    raws = data[split]
    if isinstance(raws, list) and not raws:
        raise DataFormatError(f"{path}: split '{split}' has no records")
    if not isinstance(raws, list):
        raise DataFormatError(f"{path}: split '{split}' must be a list of records")
    return [_parse_record(raw, i, dataset, split, path, image_root) for i, raw in enumerate(raws)]
