"""Reader for the refer-toolkit layout: ``data_root/<refcoco|refcoco+|refcocog>/refs(<split_by>).p``
plus the COCO ``instances.json`` beside it (read with pycocotools).

The refs file is a Python 2 pickle of plain lists and dicts. It is read with an unpickler
that refuses every global, so a tampered file cannot run code.
"""

from __future__ import annotations

import contextlib
import io
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
}


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
    folder, split_by = REFER_DATASETS[dataset]
    return data_root / folder / f"refs({split_by}).p"


def load_refs(path: Path) -> list[dict[str, Any]]:
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
        if ref["ann_id"] not in coco.anns:
            raise DataFormatError(f"{where}: annotation id {ref['ann_id']!r} not found in {coco_path}")
        if ref["image_id"] not in coco.imgs:
            raise DataFormatError(f"{where}: image id {ref['image_id']!r} not found in {coco_path}")
        ann, image = coco.anns[ref["ann_id"]], coco.imgs[ref["image_id"]]
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
        check_box(ann.get("bbox"), width, height, f"{where}: annotation {ref['ann_id']}")
        bbox = ann["bbox"]
        file_name = image.get("file_name") or ref.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise DataFormatError(f"{where}: neither image {ref['image_id']!r} in {coco_path} nor the ref has a "
                                  f"'file_name'")  # fmt: skip
        if ref["image_id"] not in objects_by_image:
            objects_by_image[ref["image_id"]] = image_objects(coco, ref["image_id"])
        records.append(
            GroundingRecord(
                image_path=image_root / "mscoco" / "train2014" / file_name,
                box_xyxy=xywh_to_xyxy(bbox),
                expressions=expressions,
                ref_id=ref_id,
                image_id=ref["image_id"],
                width=width,
                height=height,
                dataset=dataset,
                split=split,
                extra={"category_id": ref.get("category_id"), "ann_id": ref["ann_id"],
                       "objects": objects_by_image[ref["image_id"]]},  # fmt: skip
            )
        )
    return records


def _sentence_text(sentence: dict) -> str:
    """A refs sentence's text: its "sent", else its "raw" (strings only; anything else is no text)."""
    for key in ("sent", "raw"):
        if isinstance(sentence.get(key), str):
            return sentence[key]
    return ""
