"""``load_records``: one entry point over the dataset layouts users already have."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

from simvg.data.records import DataFormatError, GroundingRecord
from simvg.data.refer_layout import REFER_DATASETS, read_refer_layout, refs_file
from simvg.data.simvg_layout import annotation_file, read_simvg_layout


def available_datasets(data_root: str | Path) -> list[str]:
    """Dataset names readable under ``data_root`` (SimVG layout first, then refer layout)."""
    data_root = Path(data_root)
    names = []
    annotations = data_root / "annotations"
    if annotations.is_dir():
        names += sorted(p.parent.name for p in annotations.glob("*/instances.json"))
    listed = set()  # one name per refs file ("grefcoco-unc", not also its alias "grefcoco")
    for name, place in REFER_DATASETS.items():
        if name not in names and place not in listed and refs_file(data_root, name).is_file():
            names.append(name)
            listed.add(place)
    return names


def load_records(
    data_root: str | Path,
    dataset: str,
    split: str,
    image_root: str | Path | None = None,
    check_images: bool = True,
) -> list[GroundingRecord]:
    """Read one split of a referring-expression dataset.

    data_root: the data folder (``annotations/<dataset>/instances.json`` for the SimVG
        layout, which takes precedence, or ``<refcoco|refcoco+|refcocog>/refs(<by>).p``
        plus ``instances.json`` for the refer-toolkit layout, ``grefcoco/grefs(unc).json``
        plus ``instances.json`` for the gRefCOCO release).
    dataset: e.g. ``refcoco-unc``, ``refcocoplus-unc``, ``refcocog-umd``, ``grefcoco-unc``,
        ``synthref``.
    split: e.g. ``train``, ``val``, ``testA``, ``testB``.
    image_root: where images live; defaults to ``data_root/images``.
    check_images: raise if any image file is missing (the error names its path).

    Returns records whose ``boxes_xyxy`` (and, for single-target records, ``box_xyxy``) are
    float pixels of the original image.
    """
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise FileNotFoundError(f"data root not found: {data_root}")
    image_root = Path(image_root) if image_root is not None else data_root / "images"
    if annotation_file(data_root, dataset).is_file():
        records = read_simvg_layout(data_root, dataset, split, image_root)
    elif dataset in REFER_DATASETS and refs_file(data_root, dataset).is_file():
        records = read_refer_layout(data_root, dataset, split, image_root)
    else:
        available = available_datasets(data_root)
        raise DataFormatError(
            f"unknown dataset '{dataset}' under {data_root}: expected "
            f"{annotation_file(data_root, dataset)}"
            + (f" or {refs_file(data_root, dataset)}" if dataset in REFER_DATASETS else "")
            + f"; available: {', '.join(available) if available else 'none'}"
        )
    if check_images:
        for path in sorted({r.image_path for r in records}):
            if not path.is_file():
                ref = next(r for r in records if r.image_path == path)
                raise FileNotFoundError(
                    f"image not found: {path} (dataset '{dataset}', split '{split}', ref_id {ref.ref_id})"
                )
    # ref_ids are whatever the file holds (numbers, strings, even lists): counted by their JSON text.
    counts = Counter(json.dumps(r.ref_id, sort_keys=True, default=str) for r in records)
    repeated = [ref_id for ref_id, count in counts.items() if count > 1]
    if repeated:
        warnings.warn(f"dataset '{dataset}', split '{split}': {len(repeated)} ref_id(s) are used by more than one "
                      f"record (e.g. {repeated[0]}); saved predictions will not tell those records apart",
                      stacklevel=2)  # fmt: skip
    return records
