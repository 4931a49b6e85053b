"""Shared fixtures: tiny datasets written by the tests themselves, in both layouts users have."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "synthref_tiny.yaml"


def draw_scene(path: Path, width: int, height: int, box_xywh: list[float], color=(220, 30, 30)) -> None:
    """A grey image with one coloured rectangle at ``box_xywh``."""
    pixels = np.full((height, width, 3), 128, np.uint8)
    x, y, w, h = (round(v) for v in box_xywh)
    pixels[y : y + h, x : x + w] = color
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def simvg_root(tmp_path: Path) -> Path:
    """SimVG layout: a custom dataset with file_name, and a refcoco-unc with COCO names."""
    root = tmp_path / "data"
    records = {
        "train": [
            {"ref_id": 1, "image_id": 10, "file_name": "a.png", "bbox": [5, 6, 20, 10], "height": 40, "width": 60,
             "expressions": ["the red box", "red thing"], "expression_types": ["attribute", "attribute"]},
            {"ref_id": 2, "image_id": 11, "file_name": "sub/b.png", "bbox": [10.5, 2.25, 8, 30], "height": 50,
             "width": 30, "expressions": ["tall bar"]},
        ],
        "val": [
            {"ref_id": 3, "image_id": 12, "file_name": "c.png", "bbox": [0, 0, 10, 10], "height": 32, "width": 32,
             "expressions": ["the corner square"]},
        ],
    }
    (root / "annotations" / "mydata").mkdir(parents=True)
    (root / "annotations" / "mydata" / "instances.json").write_text(json.dumps(records))
    for split in records.values():
        for r in split:
            draw_scene(root / "images" / "mydata" / r["file_name"], r["width"], r["height"], r["bbox"])
    coco = {"train": [{"image_id": 98304, "bbox": [1, 2, 3, 4], "height": 20, "width": 30,
                       "expressions": ["a person"]}]}  # fmt: skip
    (root / "annotations" / "refcoco-unc").mkdir(parents=True)
    (root / "annotations" / "refcoco-unc" / "instances.json").write_text(json.dumps(coco))
    draw_scene(root / "images" / "mscoco" / "train2014" / "COCO_train2014_000000098304.jpg", 30, 20, [1, 2, 3, 4])
    return root


def write_refer_layout(root: Path, refs: list[dict] | None = None) -> Path:
    """refer-toolkit layout: refcoco/refs(unc).p (protocol-2 pickle) + refcoco/instances.json."""
    folder = root / "refcoco"
    folder.mkdir(parents=True, exist_ok=True)
    images = [{"id": 581857, "file_name": "COCO_train2014_000000581857.jpg", "width": 64, "height": 48},
              {"id": 42, "file_name": "COCO_train2014_000000000042.jpg", "width": 40, "height": 40}]  # fmt: skip
    annotations = [
        {"id": 1001, "image_id": 581857, "category_id": 1, "bbox": [10.0, 12.0, 20.0, 16.0], "area": 320, "iscrowd": 0},
        {"id": 1002, "image_id": 42, "category_id": 1, "bbox": [2.0, 3.0, 30.0, 25.0], "area": 750, "iscrowd": 0},
        {"id": 1003, "image_id": 581857, "category_id": 18, "bbox": [40.0, 5.0, 10.0, 10.0], "area": 100, "iscrowd": 0},
    ]
    categories = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (folder / "instances.json").write_text(json.dumps(coco))
    if refs is None:
        refs = [
            {"ref_id": 7, "ann_id": 1001, "image_id": 581857, "category_id": 1, "split": "train",
             "sentences": [{"sent": "man on the left", "raw": "Man on the left", "tokens": [], "sent_id": 1},
                           {"sent": "left guy", "raw": "left guy", "tokens": [], "sent_id": 2}],
             "sent_ids": [1, 2], "file_name": "COCO_train2014_000000581857_1001.jpg"},
            {"ref_id": 8, "ann_id": 1002, "image_id": 42, "category_id": 1, "split": "testA",
             "sentences": [{"sent": "woman", "raw": "woman", "tokens": [], "sent_id": 3}],
             "sent_ids": [3], "file_name": "COCO_train2014_000000000042_1002.jpg"},
        ]  # fmt: skip
    with (folder / "refs(unc).p").open("wb") as f:
        pickle.dump(refs, f, protocol=2)
    for image, ann in zip(images, annotations):
        draw_scene(root / "images" / "mscoco" / "train2014" / image["file_name"], image["width"], image["height"],
                   ann["bbox"])  # fmt: skip
    return root


@pytest.fixture
def refer_root(tmp_path: Path) -> Path:
    return write_refer_layout(tmp_path / "data")


@pytest.fixture(scope="session")
def synthref_root(tmp_path_factory) -> Path:
    """A small SynthRef dataset shared by the engine and CLI tests."""
    from simvg.data.synthref import generate_synthref

    root = tmp_path_factory.mktemp("synthref")
    generate_synthref(root, "synthref", {"train": 24, "val": 8, "testA": 4, "testB": 4}, seed=0, image_size=96)
    return root


@pytest.fixture(scope="session")
def tiny_run(synthref_root, tmp_path_factory) -> Path:
    """A tiny teacher trained for 8 steps (configs/synthref_tiny.yaml); returns its run folder."""
    from simvg.cli import main

    out = tmp_path_factory.mktemp("tiny") / "run"
    assert main(["train", str(TINY_CONFIG), "--data-root", str(synthref_root), "--output", str(out), "--quiet"]) == 0
    return out
