"""A model with SimVG's head ("model.head.type: simvg"), and ours with several queries (every
cell answers), train, evaluate and predict through the same commands."""

import json

import pytest
from PIL import Image

from simvg.cli import main
from simvg.inference import Grounder
from tests.conftest import TINY_CONFIG

SIMVG_HEAD = ["model.head.type=simvg", "model.head.tqg_heads=4", "model.head.decoder_heads=4",
              "model.head.num_queries=2"]  # fmt: skip
CELLS_SEVERAL = ["model.head.num_queries=3"]


@pytest.mark.parametrize("head", [SIMVG_HEAD, CELLS_SEVERAL], ids=["simvg", "cells-several-queries"])
def test_a_model_trains_evaluates_and_predicts(head, synthref_root, tmp_path, capsys):
    run = tmp_path / "run"
    overrides = [arg for item in head for arg in ("--set", item)]
    args = ["train", str(TINY_CONFIG), "--data-root", str(synthref_root), "--output", str(run), "--quiet"]
    assert main(args + overrides) == 0
    config = json.loads((run / "last" / "config.json").read_text())["config"]
    assert config["model"]["head"]["num_queries"] > 1
    capsys.readouterr()
    eval_args = ["eval", str(run / "last"), "--data-root", str(synthref_root), "--dataset", "synthref", "--split", "val", "--json"]
    assert main(eval_args) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(metrics["metrics"]) == {"token", "decoder"}
    grounder = Grounder.from_pretrained(run / "last", device="cpu")
    image = Image.new("RGB", (80, 60), (120, 120, 120))
    for branch in ("token", "decoder"):
        result = grounder.predict(image, "the red circle", branch=branch)
        x0, y0, x1, y1 = result.box
        assert 0 <= x0 <= x1 <= 80 and 0 <= y0 <= y1 <= 60


@pytest.fixture(scope="module")
def synthref_g_root(tmp_path_factory):
    from simvg.data.synthref import generate_synthref

    root = tmp_path_factory.mktemp("synthref_g")
    generate_synthref(root, "synthref-g", {"train": 24, "val": 4, "testA": 0, "testB": 0}, seed=0, image_size=96,
                      generalized=True)  # fmt: skip
    return root


AUXILIARY = ["loss.word_alignment=1.0", "loss.category=1.0"]  # read the one-target phrases only


@pytest.mark.parametrize("head", [[], AUXILIARY, CELLS_SEVERAL, SIMVG_HEAD],
                         ids=["cells", "cells-auxiliary-losses", "cells-several-queries", "simvg"])  # fmt: skip
def test_every_head_trains_on_phrases_with_no_several_or_one_target(head, synthref_g_root, tmp_path):
    from simvg.data.readers import load_records

    counts = {len(r.boxes_xyxy) for r in load_records(synthref_g_root, "synthref-g", "train")}
    assert 0 in counts and 1 in counts and max(counts) >= 2
    run = tmp_path / "run"
    overrides = head + ["data.dataset=synthref-g", "data.val_split=''"]
    args = ["train", str(TINY_CONFIG), "--data-root", str(synthref_g_root), "--output", str(run), "--quiet"]
    assert main(args + [arg for item in overrides for arg in ("--set", item)]) == 0
    assert (run / "last" / "model.safetensors").is_file()
