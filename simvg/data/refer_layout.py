"""Reader for the refer-toolkit layout: ``data_root/<refcoco|refcoco+|refcocog>/refs(<split_by>).p``
plus the COCO ``instances.json`` beside it (read with pycocotools), and for the gRefCOCO
release laid out the same way: ``data_root/grefcoco/grefs(unc).json`` (or ``.p``) plus its
``instances.json``.

A refs file is a Python 2 pickle of plain lists and dicts (or, for gRefCOCO, JSON). Pickles
are read with an unpickler that refuses every global, so a tampered file cannot run code.
A gRefCOCO ref lists its annotations (``ann_id`` is a list; ``[-1]`` with ``no_target: true``
when the sentences name nothing in the image): its record carries every box, or none.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
from pathlib import Path
from typing import Any

from simvg.data.records import DataFormatError, GroundingRecord, check_box, xywh_to_xyxy

# Dataset name (as in the SimVG layout) -> (refer folder, split_by).
REFER_DATASETS = {
    "refcoco-unc": ("refcoco", "unc"),
    "refcoco-google": ("refcoco", "google"),
    "refcocoplus-unc": ("refcoco+", "unc"),
    "refcocog-umd": ("refcocog", "umd"),
    "refcocog-google": ("refcocog", "google"),
    "grefcoco-unc": ("grefcoco", "unc"),
    "grefcoco": ("grefcoco", "unc"),
}
# Folders whose refs files are gRefCOCO's ``grefs(<split_by>)``, JSON as released (or a pickle).
GENERALIZED_FOLDERS = ("grefcoco",)


class _PlainDataUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedReader, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        raise DataFormatError(
            f"{self.path}: refuses to load '{module}.{name}': a refs file holds only plain "
            "lists, dicts, strings and numbers"
        )


def refs_file(data_root: Path, dataset: str) -> Path:
    """The refs file of ``dataset``: ``<folder>/refs(<split_by>).p``; for gRefCOCO
    ``grefcoco/grefs(<split_by>).json``, or the ``.p`` beside it when only that exists."""
    folder, split_by = REFER_DATASETS[dataset]
    if folder not in GENERALIZED_FOLDERS:
        return data_root / folder / f"refs({split_by}).p"
    released = data_root / folder / f"grefs({split_by}).json"
    pickled = released.with_suffix(".p")
    return pickled if pickled.is_file() and not released.is_file() else released


def load_refs(path: Path) -> list[dict[str, Any]]:
    """The list of refs in a refs pickle or (gRefCOCO) JSON file."""
    if path.suffix == ".json":
        try:
            refs = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataFormatError(f"{path}: not a readable refs JSON file: {err}") from err
    else:
        with path.open("rb") as f:
            try:
                refs = _PlainDataUnpickler(f, path).load()
            except DataFormatError:
                raise
            except Exception as err:
                raise DataFormatError(f"{path}: not a readable refs pickle: {err}") from err
    if not isinstance(refs, list):
        raise DataFormatError(f"{path}: expected a list of refs, got {type(refs).__name__}")
    return refs


def load_coco(path: Path):
    from pycocotools.coco import COCO

    if not path.is_file():
        raise DataFormatError(f"COCO annotation file not found: {path}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except Exception as err:
        raise DataFormatError(f"{path}: not a readable COCO instances file: {err}") from err


def image_objects(coco, image_id) -> list[dict]:
    """The image's COCO annotations as ``{"bbox": xywh, "category_id": id}``."""
    return [{"bbox": a.get("bbox"), "category_id": a.get("category_id")} for a in coco.imgToAnns.get(image_id, [])]


def read_refer_layout(data_root: Path, dataset: str, split: str, image_root: Path) -> list[GroundingRecord]:
    """Read one split of a refer-toolkit dataset; boxes come from the COCO annotations."""
    path = refs_file(data_root, dataset)
    refs = load_refs(path)
    coco_path = path.parent / "instances.json"
    coco = load_coco(coco_path)
    splits = sorted({str(r.get("split")) for r in refs if isinstance(r, dict)})
    if split not in splits:
        raise DataFormatError(f"{path}: no split '{split}'; available splits: {', '.join(splits)}")
    records = []
    objects_by_image: dict = {}  # one list per image, shared by its records
    for index, ref in enumerate(refs):
        if not isinstance(ref, dict) or ref.get("split") != split:
            continue
        ref_id = ref.get("ref_id", index)
        where = f"{path}: ref {index} (ref_id {ref_id})"
        missing = [key for key in ("ann_id", "image_id") if key not in ref]
        if missing:
            raise DataFormatError(f"{where}: the ref has no {' or '.join(missing)}")
        if ref["image_id"] not in coco.imgs:
            raise DataFormatError(f"{where}: image id {ref['image_id']!r} not found in {coco_path}")
        image = coco.imgs[ref["image_id"]]
        sentences = ref.get("sentences") or []
        expressions = [_sentence_text(s).strip() for s in sentences if isinstance(s, dict)]
        expressions = [e for e in expressions if e]
        if not expressions:
            raise DataFormatError(f"{where}: no sentences")
        width, height = image.get("width"), image.get("height")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 1 for v in (width, height)):
            raise DataFormatError(f"{where}: image {ref['image_id']!r} in {coco_path} needs positive "
                                  f"'width' and 'height', got {width!r} and {height!r}")  # fmt: skip
        width, height = int(width), int(height)
        ann_ids = _target_ann_ids(ref, where)
        boxes = []
        for ann_id in ann_ids:
            if ann_id not in coco.anns:
                raise DataFormatError(f"{where}: annotation id {ann_id!r} not found in {coco_path}")
            check_box(coco.anns[ann_id].get("bbox"), width, height, f"{where}: annotation {ann_id}")
            boxes.append(xywh_to_xyxy(coco.anns[ann_id]["bbox"]))
        file_name = image.get("file_name") or ref.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise DataFormatError(f"{where}: neither image {ref['image_id']!r} in {coco_path} nor the ref has a "
                                  f"'file_name'")  # fmt: skip
        if ref["image_id"] not in objects_by_image:
            objects_by_image[ref["image_id"]] = image_objects(coco, ref["image_id"])
        extra = {"category_id": _single(ref.get("category_id")), "ann_id": ref["ann_id"],
                 "objects": objects_by_image[ref["image_id"]]}  # fmt: skip
        records.append(
            GroundingRecord(
                image_path=image_root / "mscoco" / "train2014" / file_name,
                box_xyxy=None,
                boxes_xyxy=boxes,
                expressions=expressions,
                ref_id=ref_id,
                image_id=ref["image_id"],
                width=width,
                height=height,
                dataset=dataset,
                split=split,
                extra=extra,
            )
        )
    return records


def _target_ann_ids(ref: dict[str, Any], where: str) -> list:
    """The annotation ids a ref refers to: ``ann_id`` itself (RefCOCO), or its list (gRefCOCO),
    empty for a no-target ref (``[-1]``, ``no_target: true``; the two must agree)."""
    ann_ids = ref["ann_id"] if isinstance(ref["ann_id"], list) else [ref["ann_id"]]
    empty = ann_ids == [-1]
    if not ann_ids or (-1 in ann_ids and not empty):
        raise DataFormatError(f"{where}: ann_id must list annotation ids, or be [-1] for no target; "
                              f"got {ref['ann_id']!r}")  # fmt: skip
    flag = ref.get("no_target")
    if flag is not None and bool(flag) != empty:
        raise DataFormatError(f"{where}: no_target is {flag!r} but ann_id is {ref['ann_id']!r}")
    return [] if empty else ann_ids


def _single(value: Any) -> Any:
    """A category id, or a list's only one (gRefCOCO lists them); None for none or several."""
    if isinstance(value, list):
        return value[0] if len(value) == 1 and value[0] != -1 else None
    return value


def _sentence_text(sentence: dict) -> str:
    """A refs sentence's text: its "sent", else its "raw" (strings only; anything else is no text)."""
    for key in ("sent", "raw"):
        if isinstance(sentence.get(key), str):
            return sentence[key]
    return ""
