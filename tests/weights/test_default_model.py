"""The shipped default model (the demo's): it loads, and on SynthRef splits generated now, with
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
# The same model's figures on every evaluation split (README, same command: 1000 images per
# split, about 3000 expressions each), and the tolerance at that size: about 3 standard errors
# of the difference between two independent samples of ~3000 expressions (0.7 points).
README_SPLITS = {"val": README_ACC, "testA": 94.51, "testB": 92.97}
FULL_SIZE_TOLERANCE = 2.0


def fresh_accuracy(data: Path, split: str, capsys) -> dict:
    """The shipped model's token-branch metrics on ``split`` of the SynthRef root ``data``."""
    capsys.readouterr()
    assert main(["eval", str(DEFAULT_MODEL_DIR), "--data-root", str(data), "--dataset", "synthref",
                 "--split", split, "--branch", "token", "--json"]) == 0  # fmt: skip
    return json.loads(capsys.readouterr().out)["metrics"]["token"]


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
    metrics = fresh_accuracy(data, "val", capsys)
    assert metrics["count"] >= 600
    assert metrics["acc@0.5"] >= README_ACC - TOLERANCE, metrics


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_accuracy_at_full_size_on_every_split(tmp_path, capsys):
    # Neither below nor far above the README's figures: a model that got better (or worse)
    # than the README says means the README is out of date.
    data = tmp_path / "fresh"
    sizes = ["--val", "1000", "--testA", "1000", "--testB", "1000"]
    assert main(["synth", "--out", str(data), "--train", "0", *sizes, "--seed", "20261125", "--image-size", "256"]) == 0
    found = {split: fresh_accuracy(data, split, capsys) for split in README_SPLITS}
    assert all(m["count"] >= 2500 for m in found.values()), {split: m["count"] for split, m in found.items()}
    assert {split: round(m["acc@0.5"], 2) for split, m in found.items()} == pytest.approx(
        README_SPLITS, abs=FULL_SIZE_TOLERANCE
    )
