"""Reader for the SeqTR/SimVG layout: ``data_root/annotations/<dataset>/instances.json``.

The file is a dict split -> list of records ``{image_id, bbox (COCO xywh), expressions,
height, width, ...}``. Images resolve as SimVG does: COCO-based datasets (RefCOCO/+/g and
gRefCOCO) to ``images/mscoco/train2014/COCO_train2014_%012d.jpg``, ReferItGame to
``images/saiaprtc12/%d.jpg``, Flickr30k to ``images/flickr30k/%d.jpg``, the ``mixed``
dataset by each record's ``data_source`` (``coco``, ``flickr``, ``vg``, ``saiaprtc12``); a
record with a ``file_name`` field (e.g. SynthRef, or a user's own data) resolves to
``images/<dataset>/<file_name>``. Older names still read: a ``saiapr_tc-12`` image folder
when there is no ``saiaprtc12`` one, and the sources ``referit``, ``visual-genome`` and
``flickr30k``.

Generalized grounding (gRefCOCO, SynthRef-G): ``bbox`` may instead hold, per expression, the
list of its boxes (SimVG's GREC layout; a no-target expression has an empty list or SimVG's
placeholder ``[[0, 0, 0, 0]]`` with ``category_id`` -1 in its ``annotations``), or one list of
boxes shared by every expression. Expressions with the same boxes become one record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from simvg.data.records import DataFormatError, GroundingRecord, check_box, is_box, xywh_to_xyxy

COCO_TEMPLATE = "mscoco/train2014/COCO_train2014_%012d.jpg"
REFERIT_TEMPLATE = "saiaprtc12/%d.jpg"
FLICKR_TEMPLATE = "flickr30k/%d.jpg"
IMAGE_TEMPLATES = {
    "refcoco-unc": COCO_TEMPLATE,
    "refcocoplus-unc": COCO_TEMPLATE,
    "refcocog-umd": COCO_TEMPLATE,
    "refcocog-google": COCO_TEMPLATE,
    "grefcoco": COCO_TEMPLATE,  # SimVG's README name for gRefCOCO ...
    "grefs": COCO_TEMPLATE,  # ... the folder its conversion script writes ...
    "grefs_grec": COCO_TEMPLATE,  # ... and the one its GREC configs read
    "referitgame-berkeley": REFERIT_TEMPLATE,
    "flickr30k": FLICKR_TEMPLATE,
}
# The mixed dataset's ``data_source`` values, as SimVG's configs name them.
MIXED_TEMPLATES = {"coco": COCO_TEMPLATE, "flickr": FLICKR_TEMPLATE, "vg": "visual-genome/%d.jpg",
                   "saiaprtc12": REFERIT_TEMPLATE}  # fmt: skip
# Other names for the same sources (older files, SimVG's own ``img_source`` list).
MIXED_ALIASES = {"referit": "saiaprtc12", "saiapr_tc-12": "saiaprtc12", "visual-genome": "vg", "flickr30k": "flickr"}
# Image folders under their older names, used when the official folder is absent.
OLD_IMAGE_FOLDERS = {"saiaprtc12": "saiapr_tc-12"}


def annotation_file(data_root: Path, dataset: str) -> Path:
    return data_root / "annotations" / dataset / "instances.json"


def _mixed_template(source: str) -> str:
    if source in MIXED_TEMPLATES:
        return MIXED_TEMPLATES[source]
    if source in MIXED_ALIASES:
        return MIXED_TEMPLATES[MIXED_ALIASES[source]]
    for key in (*MIXED_ALIASES, *MIXED_TEMPLATES):  # e.g. "referitgame": a name that contains one
        if key in source:
            return MIXED_TEMPLATES[MIXED_ALIASES.get(key, key)]
    raise ValueError(f"unknown data_source {source!r}; expected one of {', '.join(MIXED_TEMPLATES)}")


def _image_relpath(dataset: str, raw: dict[str, Any]) -> str:
    if "file_name" in raw:
        return f"{dataset}/{raw['file_name']}"
    image_id = int(raw["image_id"])
    if dataset in IMAGE_TEMPLATES:
        return IMAGE_TEMPLATES[dataset] % image_id
    if dataset == "mixed":
        return _mixed_template(str(raw.get("data_source", "coco"))) % image_id
    raise KeyError("file_name")


def _resolve_folder(image_root: Path, relpath: str, folders: dict[str, str]) -> Path:
    """``image_root / relpath``, its first folder renamed to its older name when only the older
    folder exists (``saiapr_tc-12`` for ``saiaprtc12``); ``folders`` caches the choice."""
    first, _, rest = relpath.partition("/")
    if first in OLD_IMAGE_FOLDERS:
        if first not in folders:
            old = OLD_IMAGE_FOLDERS[first]
            use_old = not (image_root / first).is_dir() and (image_root / old).is_dir()
            folders[first] = old if use_old else first
        return image_root / folders[first] / rest
    return image_root / relpath


def _parse_record(
    raw: Any, index: int, dataset: str, split: str, path: Path, image_root: Path, folders: dict[str, str]
) -> list[GroundingRecord]:
    """One record of the file -> one GroundingRecord, or (per-expression boxes) one per distinct
    box set, with ref_ids ``"<ref_id>.<k>"``."""
    ident = raw.get("ref_id", index) if isinstance(raw, dict) else index
    where = f"{path}: split '{split}', record {index} (ref_id {ident})"
    if not isinstance(raw, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    missing = [k for k in ("image_id", "bbox", "expressions") if k not in raw]
    if missing:
        raise DataFormatError(f"{where}: missing field(s) {', '.join(missing)}")
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
    box_sets = _box_sets(raw, len(expressions), where)
    _check_objects(raw.get("objects"), where)
    try:
        relpath = _image_relpath(dataset, raw)
    except (KeyError, TypeError, ValueError) as err:
        raise DataFormatError(
            f"{where}: cannot resolve the image path; add a 'file_name' field ({err})"
        ) from err
    known = {"image_id", "bbox", "expressions", "expression_types", "width", "height", "ref_id", "file_name"}
    extra = {k: v for k, v in raw.items() if k not in known}
    image_path = _resolve_folder(image_root, relpath, folders)
    if box_sets is None:
        return [
            GroundingRecord(
                image_path=image_path,
                box_xyxy=xywh_to_xyxy(raw["bbox"]),
                expressions=[e.strip() for e in expressions],
                ref_id=ident,
                image_id=raw["image_id"],
                width=raw["width"],
                height=raw["height"],
                expression_types=types,
                dataset=dataset,
                split=split,
                extra=extra,
            )
        ]
    groups: dict[tuple, list[int]] = {}  # expressions by box set, the same set in any order
    for k, boxes in enumerate(box_sets):
        groups.setdefault(tuple(sorted(boxes)), []).append(k)
    records = []
    for number, members in enumerate(groups.values()):
        boxes = box_sets[members[0]]
        records.append(
            GroundingRecord(
                image_path=image_path,
                box_xyxy=None,
                boxes_xyxy=[xywh_to_xyxy(b) for b in boxes],
                expressions=[expressions[k].strip() for k in members],
                ref_id=ident if len(groups) == 1 else f"{ident}.{number}",
                image_id=raw["image_id"],
                width=raw["width"],
                height=raw["height"],
                expression_types=[types[k] for k in members] if types is not None else None,
                dataset=dataset,
                split=split,
                extra=_group_extra(extra, members, len(expressions)),
            )
        )
    return records


def _box_sets(raw: dict[str, Any], n_expressions: int, where: str) -> list[list[tuple]] | None:
    """None for a single box ``bbox: [x, y, w, h]`` (checked); otherwise each expression's boxes
    as xywh tuples, from per-expression lists (SimVG's GREC layout) or one shared list."""
    bbox, width, height = raw["bbox"], raw["width"], raw["height"]
    if not isinstance(bbox, list) or (bbox and not any(isinstance(b, list) for b in bbox)):
        check_box(bbox, width, height, where)
        return None
    if all(is_box(b) for b in bbox):  # one list of boxes (possibly empty) for every expression
        per_expression = [bbox] * n_expressions
    elif all(isinstance(b, list) and all(is_box(x) for x in b) for b in bbox):
        if len(bbox) != n_expressions:
            raise DataFormatError(f"{where}: bbox holds {len(bbox)} box lists but there are {n_expressions} "
                                  "expressions; per-expression boxes (SimVG's GREC layout) need one list each")  # fmt: skip
        per_expression = bbox
    else:
        raise DataFormatError(f"{where}: bbox must be [x, y, w, h], a list of such boxes, or one list of boxes "
                              f"per expression; got {bbox!r}")  # fmt: skip
    annotations = raw.get("annotations")
    sets = []
    for k, boxes in enumerate(per_expression):
        notes = annotations[k] if isinstance(annotations, list) and k < len(annotations) else None
        if _is_placeholder(boxes) or _marked_empty(notes):
            if boxes and not _is_placeholder(boxes):
                raise DataFormatError(f"{where}: expression {k} is marked no-target in 'annotations' but has "
                                      f"boxes {boxes!r}")  # fmt: skip
            sets.append([])
            continue
        for j, box in enumerate(boxes):
            check_box(box, width, height, f"{where}: expression {k}, box {j}")
        sets.append([tuple(float(v) for v in box) for box in boxes])
    return sets


def _is_placeholder(boxes: list) -> bool:
    """SimVG's (MDETR's) no-target entry: a single all-zero box."""
    return len(boxes) == 1 and is_box(boxes[0]) and all(v == 0 for v in boxes[0])


def _marked_empty(notes: Any) -> bool:
    """Whether SimVG's per-expression ``annotations`` mark the expression as no-target."""
    return isinstance(notes, list) and any(
        isinstance(a, dict) and (a.get("empty") is True or a.get("category_id") == -1) for a in notes
    )


def _group_extra(extra: dict[str, Any], members: list[int], n_expressions: int) -> dict[str, Any]:
    """The extras of the expressions ``members`` (which share one box set): ``programs`` cut to
    them; SimVG's per-expression ``annotations`` as the set's annotations (those of its first
    expression), which give a single target's ``category_id``."""
    out = dict(extra)
    programs = extra.get("programs")
    if isinstance(programs, list) and len(programs) == n_expressions:
        out["programs"] = [programs[k] for k in members]
    notes = extra.get("annotations")
    if isinstance(notes, list) and len(notes) == n_expressions and all(isinstance(a, list) for a in notes):
        out["annotations"] = notes[members[0]]
        ids = [a.get("category_id") for a in out["annotations"] if isinstance(a, dict)]
        if "category_id" not in out and len(ids) == 1 and ids[0] != -1:
            out["category_id"] = ids[0]
    return out


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
    folders: dict[str, str] = {}
    return [
        record
        for i, raw in enumerate(raws)
        for record in _parse_record(raw, i, dataset, split, path, image_root, folders)
    ]
