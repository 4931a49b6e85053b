"""SynthRef-G (`simvg synth --generalized`): determinism, the phrase mix, set semantics, the
SimVG-layout round trip, the independent checker; and plain SynthRef left exactly as it was."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from simvg.cli import main
from simvg.data import load_records
from simvg.data.synthref import Desc, Program, evaluate, generate_synthref
from simvg.data.synthref.programs import evaluate_set, set_type
from simvg.data.synthref.vocabulary import (
    MULTI_TYPES,
    NO_TARGET_TYPES,
    SPLIT_SET_TYPES,
    SPLIT_TYPES,
)
from tests.data.test_synthref import _Stored

ROOT = Path(__file__).resolve().parents[2]
COUNTS = {"train": 60, "val": 12, "testA": 16, "testB": 16}
SIZE = 128


def _generate(root: Path, seed: int = 1, workers: int = 1) -> Path:
    return generate_synthref(root, "synthref-g", COUNTS, seed=seed, image_size=SIZE, workers=workers, generalized=True)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synthref_g")
    return root, json.loads(_generate(root).read_text())


@pytest.fixture(scope="module")
def checker():
    spec = importlib.util.spec_from_file_location("synthref_g_check", ROOT / "bench" / "synthref_g_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_plain_synthref_is_byte_for_byte_what_it_was(tmp_path):
    # The hash of this instances.json as written before SynthRef-G existed (main at a4d7c71).
    # (PNG bytes depend on the zlib build, so only the annotations are pinned; each image is
    # drawn from the same per-image random stream right after its records.)
    path = generate_synthref(tmp_path, counts={"train": 12, "val": 4, "testA": 4, "testB": 4}, seed=5, image_size=96)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == (
        "bbc08792ae25321901b853019b324907c6fce2630d8fb6ce6759bd4749e5b0e0"
    )


def test_deterministic_and_worker_independent(tmp_path, dataset):
    root, _ = dataset
    _generate(tmp_path / "again", workers=2)
    assert _files(tmp_path / "again") == _files(root)
    other = _generate(tmp_path / "other", seed=2)
    assert other.read_bytes() != (root / "annotations" / "synthref-g" / "instances.json").read_bytes()


def test_records_phrase_mix_and_types(dataset):
    _, data = dataset
    keys = ["ref_id", "image_id", "file_name", "bbox", "height", "width", "expressions", "expression_types",
            "programs", "category", "objects", "target_indices"]  # fmt: skip
    mix: Counter = Counter()
    for split, records in data.items():
        assert {r["image_id"] for r in records} == set(range(min(r["image_id"] for r in records),
                                                            min(r["image_id"] for r in records) + COUNTS[split]))  # fmt: skip
        allowed = set(SPLIT_TYPES[split]) | set(SPLIT_SET_TYPES[split])
        for r in records:
            assert list(r) == keys
            n = len(r["target_indices"])
            assert 1 <= len(r["expressions"]) <= 3 and len(set(r["expressions"])) == len(r["expressions"])
            assert len(r["bbox"]) == len(r["expressions"]) == len(r["expression_types"]) == len(r["programs"])
            assert all(boxes == [r["objects"][i]["bbox"] for i in r["target_indices"]] for boxes in r["bbox"])
            assert set(r["expression_types"]) <= allowed
            if n == 1:
                assert set(r["expression_types"]) <= set(SPLIT_TYPES[split])
                target = r["objects"][r["target_indices"][0]]
                assert r["category"] == f"{target['size']} {target['color']} {target['shape']}"
            else:
                assert set(r["expression_types"]) <= set(NO_TARGET_TYPES if n == 0 else MULTI_TYPES)
                assert r["category"] is None
            mix["single" if n == 1 else "multi" if n else "none"] += len(r["expressions"])
    total = sum(mix.values())
    # About half single-target phrases and a quarter each of multi-target and no-target ones.
    assert 0.4 < mix["single"] / total < 0.6
    assert 0.15 < mix["multi"] / total < 0.35 and 0.15 < mix["none"] / total < 0.35
    types = {t for r in data["train"] for t in r["expression_types"]}
    assert types == set(SPLIT_TYPES["train"]) | set(SPLIT_SET_TYPES["train"])


def test_every_phrase_denotes_exactly_its_targets(dataset):
    _, data = dataset
    for records in data.values():
        for r in records:
            objs = [_Stored.from_record(o) for o in r["objects"]]
            for etype, p in zip(r["expression_types"], r["programs"]):
                landmark = None if p["landmark"] is None else Desc(**p["landmark"])
                program = Program(p["op"], Desc(**p["target"]), p["arg"], landmark, p.get("count"))
                assert evaluate_set(program, objs, SIZE) == r["target_indices"]
                if len(r["target_indices"]) == 1:
                    assert program.type == etype and evaluate(program, objs, SIZE) == r["target_indices"][0]
                else:
                    assert set_type(program.op, len(r["target_indices"])) == etype


def test_set_semantics_reject_wrong_counts_and_unclear_objects():
    side = 100.0
    # Three red circles (two at the upper left and right, one at the top middle) and a star in the middle.
    objs = [_Stored("circle", "red", "small", (5, 20, 15, 30)), _Stored("circle", "red", "small", (85, 20, 95, 30)),
            _Stored("star", "blue", "small", (45, 45, 55, 55)), _Stored("circle", "red", "small", (45, 5, 55, 15))]  # fmt: skip
    circles, star = Desc(None, "red", "circle"), Desc(None, None, "star")
    assert evaluate_set(Program("all", circles), objs, side) == [0, 1, 3]
    assert evaluate_set(Program("all", circles, count=3), objs, side) == [0, 1, 3]
    assert evaluate_set(Program("all", circles, count=2), objs, side) is None  # "the two red circles"
    assert evaluate_set(Program("all", Desc(None, "purple", "star")), objs, side) == []
    assert evaluate_set(Program("relate_all", circles, "left", star), objs, side) == [0]
    assert evaluate_set(Program("relate_all", circles, "below", star), objs, side) == []
    assert evaluate_set(Program("region_all", circles, "top"), objs, side) == [0, 1, 3]
    assert evaluate_set(Program("region_all", circles, "bottom"), objs, side) == []
    # A circle just left of the middle is too close to call for "left of" and "on the left".
    objs[3] = _Stored("circle", "red", "small", (41, 5, 49, 13))
    assert evaluate_set(Program("relate_all", circles, "left", star), objs, side) is None
    assert evaluate_set(Program("region_all", circles, "left"), objs, side) is None


def test_generalized_records_read_back_through_the_simvg_layout(dataset):
    root, data = dataset
    for split, raws in data.items():
        records = load_records(root, "synthref-g", split)
        assert len(records) == len(raws)  # a record's phrases share one target set
        for record, raw in zip(records, raws):
            boxes = [tuple(float(v) for v in (x, y, x + w, y + h)) for x, y, w, h in raw["bbox"][0]]
            assert record.ref_id == raw["ref_id"] and record.boxes_xyxy == boxes
            assert record.box_xyxy == (boxes[0] if len(boxes) == 1 else None)
            assert record.expressions == raw["expressions"] and record.expression_types == raw["expression_types"]
            assert record.extra["programs"] == raw["programs"] and record.extra["target_indices"] == raw["target_indices"]
            assert record.category == raw["category"]
            assert record.image_path == root / "images" / "synthref-g" / raw["file_name"]


def test_independent_checker_agrees_and_catches_wrong_records(dataset, checker, capsys, tmp_path):
    root, data = dataset
    assert checker.main([str(root)]) == 0
    out = capsys.readouterr().out
    assert f"agreement: {sum(len(r['expressions']) for rs in data.values() for r in rs)}/" in out and "(100.00%)" in out
    report = checker.check(data)
    mix = report["splits"]["train"]["mix"]
    assert set(mix) == {"single", "multi", "no-target"} and all(v > 0.1 for v in mix.values())
    multi = next(r for r in data["train"] if len(r["target_indices"]) >= 2)
    single = next(r for r in data["train"] if len(r["target_indices"]) == 1)
    counted = next(r for rs in data.values() for r in rs if any(p.get("count") for p in r["programs"]))
    broken = {  # what is broken -> the phrases that must then disagree
        "targets": (lambda d: d["train"][data["train"].index(multi)]["target_indices"].pop(), len(multi["expressions"])),
        "boxes": (lambda d: d["train"][data["train"].index(single)]["bbox"][0].clear(), 1),
        "count": (lambda d: _restate(d, counted), 1),
    }
    for name, (corrupt, phrases) in broken.items():
        wrong = copy.deepcopy(data)
        corrupt(wrong)
        assert checker.check(wrong)["agree"] == report["agree"] - phrases, name
    assert checker.main([str(root), "--split", "val", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["splits"]) == {"val"}
    (tmp_path / "annotations" / "synthref-g").mkdir(parents=True)
    (tmp_path / "annotations" / "synthref-g" / "instances.json").write_text(json.dumps(wrong))
    assert checker.main([str(tmp_path)]) == 1
    assert "disagrees: " in capsys.readouterr().out


def _restate(data: dict, record: dict) -> None:
    """Change the number a counted phrase states ("the two ..." -> "the seven ...")."""
    for recs in data.values():
        for r in recs:
            if r["ref_id"] == record["ref_id"]:
                k = next(k for k, p in enumerate(r["programs"]) if p.get("count"))
                words = {2: "two", 3: "three", 4: "four"}
                text = r["expressions"][k]
                r["expressions"][k] = text.replace("both", "the seven").replace(words.get(len(r["target_indices"]), "?"), "seven")


def test_synth_command_writes_synthref_g(tmp_path, capsys):
    args = ["synth", "--out", str(tmp_path), "--train", "3", "--val", "1", "--testA", "1", "--testB", "1",
            "--image-size", "64", "--generalized"]  # fmt: skip
    assert main(args) == 0
    assert "of 'synthref-g'" in capsys.readouterr().out
    data = json.loads((tmp_path / "annotations" / "synthref-g" / "instances.json").read_text())
    assert all("target_indices" in r for rs in data.values() for r in rs)
