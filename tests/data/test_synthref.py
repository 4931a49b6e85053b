"""SynthRef generator: layout, determinism, box fidelity and expression correctness."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simvg.data.synthref import Desc, Program, evaluate, generate_synthref
from simvg.data.synthref.vocabulary import COLORS, PLURALS, SHAPES

COUNTS = {"train": 24, "val": 8, "testA": 16, "testB": 16}
SIZE = 128
TYPES = {"attribute", "location", "relation", "comparison"}


def _generate(root: Path, seed: int = 3, workers: int = 1) -> Path:
    return generate_synthref(root, counts=COUNTS, seed=seed, image_size=SIZE, workers=workers)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synthref")
    path = _generate(root)
    return root, json.loads(path.read_text())


def _records(data: dict) -> list[tuple[str, dict]]:
    return [(split, r) for split, recs in data.items() for r in recs]


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# --- layout and determinism -----------------------------------------------------------------


def test_layout_and_fields(dataset):
    root, data = dataset
    assert list(data) == ["train", "val", "testA", "testB"]
    for split, recs in data.items():
        image_ids = {r["image_id"] for r in recs}
        assert len(image_ids) == COUNTS[split]  # every image has at least one record
        per_image = {i: sum(r["image_id"] == i for r in recs) for i in image_ids}
        assert set(per_image.values()) <= {1, 2}
    keys = [
        "ref_id",
        "image_id",
        "file_name",
        "bbox",
        "height",
        "width",
        "expressions",
        "expression_types",
        "programs",
        "category",
        "objects",
        "target_index",
    ]
    for split, r in _records(data):
        assert list(r) == keys
        assert r["file_name"].startswith(f"{split}/") and r["file_name"].endswith(".png")
        image = Image.open(root / "images" / "synthref" / r["file_name"])
        assert image.format == "PNG" and image.size == (SIZE, SIZE) and image.mode == "RGB"
        assert r["height"] == r["width"] == SIZE
        assert 1 <= len(r["expressions"]) <= 3
        assert len(r["expressions"]) == len(r["expression_types"]) == len(r["programs"])
        assert len(set(r["expressions"])) == len(r["expressions"])
        assert all(isinstance(e, str) and e for e in r["expressions"])
        assert set(r["expression_types"]) <= TYPES
        assert 3 <= len(r["objects"]) <= 8
        assert all(list(o) == ["bbox", "shape", "color", "size"] for o in r["objects"])
        target = r["objects"][r["target_index"]]
        assert target["bbox"] == r["bbox"]
        assert r["category"] == f"{target['size']} {target['color']} {target['shape']}"
        assert all(isinstance(v, float) for v in r["bbox"])
        for o in r["objects"]:
            x, y, w, h = o["bbox"]
            assert x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE and w > 0 and h > 0
            assert o["shape"] in SHAPES and o["color"] in COLORS and o["size"] in ("small", "large")


def test_ids_unique(dataset):
    _, data = dataset
    records = [r for _, r in _records(data)]
    ref_ids = [r["ref_id"] for r in records]
    assert len(set(ref_ids)) == len(ref_ids)
    image_ids = {}
    for r in records:  # one image id <-> one file, across all splits
        assert image_ids.setdefault(r["image_id"], r["file_name"]) == r["file_name"]
    assert len(set(image_ids.values())) == len(image_ids) == sum(COUNTS.values())


def test_split_types(dataset):
    _, data = dataset
    for split, allowed in (
        ("testA", {"attribute", "location"}),
        ("testB", {"relation", "comparison"}),
    ):
        types = {t for r in data[split] for t in r["expression_types"]}
        assert types and types <= allowed
    train_types = {t for r in data["train"] for t in r["expression_types"]}
    assert train_types == TYPES


def test_deterministic_and_worker_independent(tmp_path, dataset):
    root, _ = dataset
    again = tmp_path / "again"
    _generate(again, workers=2)
    assert _files(again) == _files(root)
    other = tmp_path / "other"
    _generate(other, seed=4)
    assert (other / "annotations/synthref/instances.json").read_bytes() != (
        root / "annotations/synthref/instances.json"
    ).read_bytes()


def test_regenerating_with_fewer_images_leaves_no_stale_ones(tmp_path):
    generate_synthref(tmp_path, counts={"train": 4, "val": 2}, seed=1, image_size=64)
    own = tmp_path / "images" / "synthref" / "train"
    (own / "mine.png").write_bytes(b"a user's file")
    path = generate_synthref(tmp_path, counts={"train": 2, "val": 2}, seed=1, image_size=64)
    listed = {r["file_name"] for r in json.loads(path.read_text())["train"]}
    assert {f"train/{p.name}" for p in own.glob("*.png") if p.name != "mine.png"} == listed
    assert (own / "mine.png").read_bytes() == b"a user's file"


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"counts": {"train": -1}}, "counts"),
        ({"counts": {"test": 2}}, "counts"),
        ({"counts": {"train": 1.5}}, "counts"),
        ({"image_size": 32}, "image_size"),
        ({"workers": 0}, "workers"),
        ({"seed": "1"}, "seed"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, word):
    args = {"counts": {"train": 1}} | kwargs
    with pytest.raises(ValueError, match=word):
        generate_synthref(tmp_path, **args)


# --- boxes against pixels -----------------------------------------------------------------------


def _chroma(image: np.ndarray) -> np.ndarray:
    return image.max(axis=2).astype(int) - image.min(axis=2).astype(int)


def test_bbox_matches_drawn_object(dataset):
    root, data = dataset
    checked = 0
    seen = set()
    for _, r in _records(data):
        if r["image_id"] in seen:
            continue
        seen.add(r["image_id"])
        chroma = _chroma(np.asarray(Image.open(root / "images" / "synthref" / r["file_name"])))
        boxes = [[int(v) for v in o["bbox"]] for o in r["objects"]]
        for k, (x, y, w, h) in enumerate(boxes):
            isolated = all(
                ox > x + w + 4 or x > ox + ow + 4 or oy > y + h + 4 or y > oy + oh + 4
                for j, (ox, oy, ow, oh) in enumerate(boxes)
                if j != k
            )
            if not isolated:
                continue
            inside = chroma[y : y + h, x : x + w]
            # Backgrounds are low-saturation; objects are saturated and fill much of their box.
            assert (inside > 60).mean() > 0.3
            ring = np.concatenate(
                [
                    chroma[max(y - 3, 0), x : x + w],
                    chroma[min(y + h + 2, SIZE - 1), x : x + w],
                    chroma[y : y + h, max(x - 3, 0)],
                    chroma[y : y + h, min(x + w + 2, SIZE - 1)],
                ]
            )
            assert ring.max() < 45
            # Tight: each edge row/column of the box holds object pixels.
            for edge in (inside[0], inside[-1], inside[:, 0], inside[:, -1]):
                assert edge.max() > ring.max()
            checked += 1
    assert checked > 50


# --- expressions ------------------------------------------------------------------------------


def _matches(desc: dict, o: dict) -> bool:
    return all(desc[k] is None or o[k] == desc[k] for k in ("size", "color", "shape"))


def _centre(o: dict) -> tuple[float, float]:
    x, y, w, h = o["bbox"]
    return x + w / 2, y + h / 2


def _independent_target(p: dict, objs: list[dict]) -> int | None:
    """A from-scratch reading of a program against the stored objects (simple geometry, with
    looser margins than the generator's), returning the index it picks or None if unclear."""
    members = [i for i, o in enumerate(objs) if _matches(p["target"], o)]
    op, arg = p["op"], p["arg"]
    cx = {i: _centre(objs[i])[0] / SIZE for i in range(len(objs))}
    cy = {i: _centre(objs[i])[1] / SIZE for i in range(len(objs))}
    area = {i: objs[i]["bbox"][2] * objs[i]["bbox"][3] for i in range(len(objs))}
    if op == "unique":
        return members[0] if len(members) == 1 else None
    if op == "extreme":
        assert len(members) >= 2  # otherwise the location word would not be needed
        key = {
            "left": lambda i: -cx[i],
            "right": cx.get,
            "top": lambda i: -cy[i],
            "bottom": cy.get,
        }[arg]
        ranked = sorted(members, key=key, reverse=True)
        return ranked[0] if key(ranked[0]) - key(ranked[1]) >= 0.05 else None
    if op == "region":
        assert len(members) >= 2

        def inside(i: int) -> bool:
            if arg == "middle":
                return max(abs(cx[i] - 0.5), abs(cy[i] - 0.5)) < 0.17
            tests = {
                "left": cx[i] < 0.5,
                "right": cx[i] > 0.5,
                "top": cy[i] < 0.5,
                "bottom": cy[i] > 0.5,
            }
            return all(tests[part] for part in arg.split())

        hits = [i for i in members if inside(i)]
        return hits[0] if len(hits) == 1 else None
    if op == "compare":
        if len(members) != 2:
            return None
        a, b = members
        value = {
            "bigger": area,
            "smaller": {i: -area[i] for i in members},
            "left": {i: -cx[i] for i in members},
            "right": cx,
            "upper": {i: -cy[i] for i in members},
            "lower": cy,
        }[arg]
        return a if value[a] > value[b] else b
    if op == "relate":
        anchors = [i for i, o in enumerate(objs) if _matches(p["landmark"], o)]
        if len(anchors) != 1:
            return None
        lm = anchors[0]
        cands = [i for i in members if i != lm]
        if arg in ("closest", "farthest"):
            dist = {i: math.hypot(cx[i] - cx[lm], cy[i] - cy[lm]) for i in cands}
            ranked = sorted(cands, key=dist.get, reverse=arg == "farthest")
            return ranked[0] if abs(dist[ranked[0]] - dist[ranked[1]]) >= 0.05 else None
        # Half-plane reading: the target is on that side, every other candidate is not.
        along = {
            "left": lambda i: cx[lm] - cx[i],
            "right": lambda i: cx[i] - cx[lm],
            "above": lambda i: cy[lm] - cy[i],
            "below": lambda i: cy[i] - cy[lm],
        }[arg]
        hits = [i for i in cands if along(i) > 0.02]
        return hits[0] if len(hits) == 1 else None
    raise AssertionError(op)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text))


def test_every_program_denotes_its_target(dataset):
    _, data = dataset
    ops = set()
    for _, r in _records(data):
        objs = r["objects"]
        for text, etype, p in zip(r["expressions"], r["expression_types"], r["programs"]):
            ops.add(p["op"])
            assert _independent_target(p, objs) == r["target_index"], (text, p)
            # The generator's own semantics, re-run on the stored boxes.
            program = Program(
                p["op"],
                Desc(**p["target"]),
                p["arg"],
                None if p["landmark"] is None else Desc(**p["landmark"]),
            )
            assert program.type == etype
            assert (
                evaluate(program, [_Stored.from_record(o) for o in objs], SIZE) == r["target_index"]
            ), text
            # The words of the phrase name exactly the colours and shapes of the program.
            descs = [p["target"]] + ([p["landmark"]] if p["landmark"] else [])
            words = _words(text)
            assert words & set(COLORS) == {d["color"] for d in descs if d["color"]}, text
            named = {s for s in SHAPES if s in words or PLURALS[s] in words}
            assert named == {d["shape"] for d in descs if d["shape"]}, text
    assert ops == {"unique", "extreme", "region", "relate", "compare"}


@dataclass
class _Stored:
    """A stored object seen through the attributes `evaluate` reads (box as pixel xyxy)."""

    shape: str
    color: str
    size: str
    box: tuple[float, float, float, float]

    @classmethod
    def from_record(cls, o: dict) -> _Stored:
        x, y, w, h = o["bbox"]
        return cls(o["shape"], o["color"], o["size"], (x, y, x + w, y + h))
