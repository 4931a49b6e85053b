"""The shipped default model (the demo's): it loads, and on a SynthRef split generated now, with
a seed it never saw, it is as accurate as the README says."""

import json
import re
from pathlib import Path

import pytest

from simvg import Grounder
from simvg.cli import main
from simvg.weights import DEFAULT_MODEL_DIR

ROOT = Path(__file__).resolve().parents[2]
# The README's "Shipped default model" figure (SynthRef val, token branch, Acc@0.5), and the
# tolerance for the sampling noise of ~900 fresh expressions (about 2.5 standard errors).
README_ACC = 92.56
TOLERANCE = 4.0


def test_the_default_model_is_shipped_small_and_loads():
    assert (DEFAULT_MODEL_DIR / "model.safetensors").is_file(), f"missing {DEFAULT_MODEL_DIR}"
    size = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir())
    assert size <= 20 * 2**20
    grounder = Grounder.from_pretrained(DEFAULT_MODEL_DIR, device="cpu")
    assert grounder.branches == ("token",)


def test_the_readme_states_the_figure_this_test_checks():
    readme = (ROOT / "README.md").read_text()
    claimed = re.search(r"shipped student.*?Acc@0\.5 \*\*([\d.]+)%\*\*", readme, re.S | re.I)
    assert claimed and float(claimed.group(1)) == pytest.approx(README_ACC, abs=0.05)


def test_accuracy_on_a_freshly_generated_split(tmp_path, capsys):
    data = tmp_path / "fresh"
    args = ["synth", "--out", str(data), "--train", "0", "--val", "300", "--testA", "0", "--testB", "0"]
    assert main([*args, "--seed", "20261124", "--image-size", "256"]) == 0
    capsys.readouterr()
    assert main(["eval", str(DEFAULT_MODEL_DIR), "--data-root", str(data), "--dataset", "synthref",
                 "--split", "val", "--json"]) == 0  # fmt: skip
    metrics = json.loads(capsys.readouterr().out)["metrics"]["token"]
    assert metrics["count"] >= 600
    assert metrics["acc@0.5"] >= README_ACC - TOLERANCE, metrics
