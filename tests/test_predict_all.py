"""Grounder.predict_all and ``simvg predict --all``: every box of a phrase whose score reaches
the threshold, possibly none.

A tiny model with four queries; a forward hook sets what each query of a branch answers (its
score and box), so the expected results are known exactly: the same post-processing then runs
as for any model.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from simvg import Grounder
from simvg.cli import main
from simvg.config import load_config
from simvg.engine.checkpoint import save_checkpoint
from simvg.models import build_model
from simvg.models.pretrained import load_tokenizer
from tests.conftest import TINY_CONFIG

# A 200 x 100 image in the 64-pixel input: scaled by 0.32, at the top-left.
IMAGE = np.zeros((100, 200, 3), np.uint8)
SCALE = 64 / 200
SCORES = [0.9, 0.5, 0.75, 0.1]
BOXES = [(0.25, 0.25, 0.2, 0.2), (0.5, 0.25, 0.5, 0.25), (0.75, 0.3, 0.1, 0.2), (0.1, 0.1, 0.05, 0.05)]


def expected_box(cxcywh: tuple[float, ...]) -> tuple[float, ...]:
    """A query's normalised cxcywh box in the 200 x 100 image's pixels (xyxy)."""
    cx, cy, w, h = (v * 64 for v in cxcywh)
    return ((cx - w / 2) / SCALE, (cy - h / 2) / SCALE, (cx + w / 2) / SCALE, (cy + h / 2) / SCALE)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    config = load_config(TINY_CONFIG)
    config.model.head.num_queries = len(SCORES)
    tokenizer = load_tokenizer("minilm-l6")
    torch.manual_seed(0)
    model = build_model(config.model, len(tokenizer))
    directory = tmp_path_factory.mktemp("queries") / "tiny"
    save_checkpoint(directory, model, config, model.encoder.backbone_config(), tokenizer)
    return directory


@pytest.fixture(scope="module")
def grounder(checkpoint):
    return Grounder.from_pretrained(checkpoint, device="cpu")


def answer(grounder: Grounder, branch: str, scores=SCORES, boxes=BOXES):
    """Make every query q of ``branch`` answer boxes[q] with score scores[q] (a forward hook on
    the model); a token branch then answers with several queries, as a several-query head."""
    p = torch.tensor(scores)
    logits = torch.stack([p.log(), (1 - p).log()], dim=-1)[None]  # softmax(...)[..., 0] == p
    cells = torch.tensor(boxes)[None]

    def hook(module, args, output):
        batch = output["token"]["logits"].shape[0]
        return {**output, branch: {"logits": logits.expand(batch, -1, -1), "boxes": cells.expand(batch, -1, -1)}}

    return grounder.model.register_forward_hook(hook)


@pytest.mark.parametrize("branch", ["decoder", "token"])
def test_every_query_above_the_threshold_best_first(grounder, branch):
    handle = answer(grounder, branch)
    try:
        found = grounder.predict_all(IMAGE, "all the red circles", threshold=0.7, branch=branch)
        assert [round(r.score, 5) for r in found] == [0.9, 0.75]
        for result, query in zip(found, (0, 2)):
            assert np.allclose(result.box, expected_box(BOXES[query]), atol=1e-3)
            assert result.text == "all the red circles" and result.branch == branch
        assert len(grounder.predict_all(IMAGE, "x", threshold=0.0, branch=branch)) == 4
        assert grounder.predict_all(IMAGE, "the purple star", threshold=0.95, branch=branch) == []
        best = grounder.predict(IMAGE, "x", branch=branch)
        assert math.isclose(best.score, 0.9, abs_tol=1e-5) and np.allclose(best.box, expected_box(BOXES[0]), atol=1e-3)
    finally:
        handle.remove()


def test_a_score_equal_to_the_threshold_is_kept(grounder):
    handle = answer(grounder, "decoder", scores=[0.5, 0.5, 0.25, 0.25])
    try:
        assert len(grounder.predict_all(IMAGE, "x", threshold=0.5, branch="decoder")) == 2
    finally:
        handle.remove()


def test_lists_give_one_list_per_phrase(grounder):
    handle = answer(grounder, "decoder")
    try:
        found = grounder.predict_all(IMAGE, ["a", "b", "c"], threshold=0.7, branch="decoder")
        assert [len(kept) for kept in found] == [2, 2, 2] and [kept[0].text for kept in found] == ["a", "b", "c"]
        assert len(grounder.predict_all([IMAGE, IMAGE], "a", branch="decoder")) == 2
    finally:
        handle.remove()


def test_a_single_query_branch_gives_its_box_when_it_scores_enough(tmp_path):
    from tests.engine.test_checkpoint import save_tiny

    save_tiny(tmp_path / "one")  # a token branch with one query: one box per phrase
    grounder = Grounder.from_pretrained(tmp_path / "one", device="cpu")
    best = grounder.predict(IMAGE, "the red circle")
    found = grounder.predict_all(IMAGE, "the red circle", threshold=best.score)
    assert len(found) == 1 and np.allclose(found[0].box, best.box, atol=1e-4)
    assert grounder.predict_all(IMAGE, "the red circle", threshold=(best.score + 1) / 2) == []


@pytest.mark.parametrize("threshold", [-0.1, 1.5, "0.7", None, True])
def test_a_bad_threshold_is_a_clear_error(grounder, threshold):
    with pytest.raises(ValueError, match="threshold must be a number in"):
        grounder.predict_all(IMAGE, "x", threshold=threshold)


def test_cli_predict_all(checkpoint, tmp_path, capsys):
    from PIL import Image

    Image.fromarray(IMAGE).save(tmp_path / "a.png")
    args = ["predict", str(checkpoint), "--image", str(tmp_path / "a.png"), "--text", "all circles", "--all"]
    assert main([*args, "--threshold", "0", "--json", "--branch", "decoder", "--out", str(tmp_path / "d.png")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["threshold"] == 0 and len(report["results"]) == len(SCORES) and (tmp_path / "d.png").is_file()
    scores = [r["score"] for r in report["results"]]
    assert scores == sorted(scores, reverse=True)
    assert main([*args, "--threshold", "1"]) == 0
    assert "no match" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*args, "--threshold", "1.5"])
    assert "must be in [0, 1]" in capsys.readouterr().err
    (tmp_path / "phrases.jsonl").write_text('{"image": "a.png", "text": "x"}\n{"image": "a.png", "text": "y"}\n')
    batch = ["predict", str(checkpoint), "--image", str(tmp_path), "--phrases", str(tmp_path / "phrases.jsonl"),
             "--all", "--threshold", "0", "--branch", "decoder", "--output", str(tmp_path / "out.jsonl")]  # fmt: skip
    assert main(batch) == 0
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(r["image"], r["text"], len(r["results"])) for r in rows] == [("a.png", "x", 4), ("a.png", "y", 4)]


def test_answer_nms_drops_a_box_that_repeats_a_better_one(checkpoint):
    """model.head.answer_nms: a query whose box overlaps a higher-scored one is not an answer."""
    grounder = Grounder.from_pretrained(checkpoint, device="cpu")
    grounder.config.model.head.answer_nms = 0.5
    repeated = [BOXES[0], (0.26, 0.25, 0.2, 0.2), BOXES[2], BOXES[3]]  # query 1 repeats query 0
    handle = answer(grounder, "decoder", scores=[0.9, 0.8, 0.75, 0.1], boxes=repeated)
    try:
        found = grounder.predict_all(IMAGE, "all the red circles", threshold=0.7, branch="decoder")
        assert [round(r.score, 5) for r in found] == [0.9, 0.75]
    finally:
        handle.remove()
    with pytest.raises(ValueError, match="answer_nms"):
        load_config(TINY_CONFIG, overrides=["model.head.answer_nms=1.5"])


def test_answer_merge_sum_gives_a_kept_box_its_duplicates_chances(checkpoint):
    """model.head.answer_merge "sum": two cells on one object at 0.45 and 0.4 (each unsure which
    is the object's centre) answer it once at 0.85; a box on another object keeps its own score;
    nothing exceeds 1."""
    grounder = Grounder.from_pretrained(checkpoint, device="cpu")
    grounder.config.model.head.answer_nms = 0.5
    grounder.config.model.head.answer_merge = "sum"
    boxes = [BOXES[0], (0.26, 0.25, 0.2, 0.2), BOXES[2], (0.76, 0.3, 0.1, 0.2)]  # 1 repeats 0, 3 repeats 2
    handle = answer(grounder, "decoder", scores=[0.45, 0.4, 0.75, 0.5], boxes=boxes)
    try:
        found = grounder.predict_all(IMAGE, "all the red circles", threshold=0.7, branch="decoder")
        assert [round(r.score, 5) for r in found] == [1.0, 0.85]
        assert np.allclose(found[1].box, expected_box(BOXES[0]), atol=1e-3)  # the better-scored cell's box
        grounder.config.model.head.answer_merge = "max"
        assert [round(r.score, 5) for r in grounder.predict_all(IMAGE, "x", threshold=0.01, branch="decoder")] == [0.75, 0.45]
    finally:
        handle.remove()
    with pytest.raises(ValueError, match="answer_merge"):
        load_config(TINY_CONFIG, overrides=["model.head.answer_merge=mean"])
    with pytest.raises(ValueError, match="answer_nms"):  # nothing to add up without duplicate removal
        load_config(TINY_CONFIG, overrides=["model.head.answer_merge=sum"])
