"""The default teacher's recipe (configs/synthref_hybrid.yaml) still learns to ground: its first
500 steps (of 1000), on a SynthRef training set of the recipe's size. Slow: about 8 minutes on 2
CPU cores (`make test-slow`)."""

import csv

import pytest

from simvg.cli import main
from tests.conftest import ROOT

CONFIG = ROOT / "configs" / "synthref_hybrid.yaml"
STEPS = 500
# bench/results/teacher_recipe_500.md: this recipe reaches 87.8% val Acc@0.5 (token branch, 1000
# expressions) after 500 steps; without its landmark relation, 76.1. The threshold lies between
# them: the margin covers a CPU without bf16 (fp32 training takes another path) and the sampling
# noise of 1000 expressions (1 point), and a recipe that lost its landmark relation still fails.
THRESHOLD = 80.0


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_teacher_recipe_reaches_its_accuracy_in_500_steps(tmp_path):
    data, run = tmp_path / "data", tmp_path / "teacher"
    sizes = ["--train", "10000", "--val", "1000", "--testA", "0", "--testB", "0"]
    assert main(["synth", "--out", str(data), *sizes, "--seed", "0", "--image-size", "256"]) == 0
    assert main(["train", str(CONFIG), "--data-root", str(data), "--output", str(run), "--max-steps", str(STEPS),
                 "--quiet"]) == 0  # fmt: skip
    with (run / "eval_log.csv").open() as f:
        final = {row["branch"]: float(row["acc@0.5"]) for row in csv.DictReader(f) if int(row["step"]) == STEPS}
    assert final["token"] >= THRESHOLD, final
