"""bench/distill_study.py: every row of the distillation study from one command (--quick)."""

import importlib.util
import json
import sys

from tests.conftest import ROOT


def load_study():
    spec = importlib.util.spec_from_file_location("distill_study", ROOT / "bench" / "distill_study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_whole_study_runs_from_one_command_and_resumes(tiny_run, synthref_root, tmp_path):
    study = load_study()
    out, results = tmp_path / "study", tmp_path / "results"
    common = ["--quick", "--teacher", str(tiny_run / "last"), "--data-root", str(synthref_root), "--out", str(out),
              "--results", str(results)]  # fmt: skip
    study.main([*common, "--seeds", "0"])

    report = json.loads((results / "distill_study.json").read_text())
    names = [r["name"] for r in report["rows"]]
    assert names == ["teacher", *study.ROW_NAMES, "teacher_int8", "shipped_int8", "dconv_stem_int8"]
    for row in report["rows"]:
        assert set(row["seeds"]["0"]) == {"val", "testA", "testB", "fresh"}  # the blind split too
        assert row["parameters"] > 0 and row["images_per_s"] > 0
    compared = {(c["row"], c["base"]) for c in report["comparisons"]}
    assert ("no_one", "shipped") in compared and ("box_only", "shipped") in compared
    assert ("averaged", "takfl") in compared
    takfl = next(t for t in report["takfl"] if t["name"] == "takfl")
    assert len(takfl["lambdas"]) == 2 and abs(sum(takfl["lambdas"]) - 1) < 1e-6
    table = (results / "distill_study.md").read_text()
    assert "| shipped |" in table and "| averaged | takfl |" in table
    assert (results / "distill_pareto.png").stat().st_size > 0
    assert (out / "fresh_split" / "annotations" / "synthref" / "instances.json").is_file()

    # Run again with more seeds: finished runs are kept as they are, and rows within --close
    # points of their base (here: all) run at every seed, their base too.
    weights = out / "shipped" / "seed0" / "best" / "model.safetensors"
    written = weights.stat().st_mtime_ns
    study.main([*common, "--seeds", "0,1", "--only", "shipped,no_one,no_at", "--close", "101", "--int8", ""])
    assert weights.stat().st_mtime_ns == written
    for name in ("shipped", "no_one", "no_at"):
        assert (out / name / "seed1" / "best" / "model.safetensors").is_file()
    report = json.loads((results / "distill_study.json").read_text())
    assert {r["name"]: sorted(r["seeds"]) for r in report["rows"]}["no_one"] == ["0", "1"]
    assert not (out / "no_gt" / "seed1").exists()

    # TAKFL against averaged teachers runs at every seed even where the two lie far apart; other
    # rows only within --close points.
    study.main([*common, "--seeds", "0,1", "--only", "shipped,box_only,takfl,averaged", "--close", "0", "--int8", ""])
    assert (out / "takfl" / "seed1" / "best").is_dir() and (out / "averaged" / "seed1" / "best").is_dir()
    assert not (out / "box_only" / "seed1").exists()
    report = json.loads((results / "distill_study.json").read_text())
    assert sorted(next(c for c in report["comparisons"] if c["row"] == "averaged")["seeds"]) == [0, 1]
