"""Evaluation of a split: our figures, SimVG's protocol, and GREC on generalized records."""

import copy

import pytest
import torch

from simvg.data.dataset import GroundingDataset
from simvg.data.readers import load_records
from simvg.engine.evaluate import (
    evaluation_loader,
    predict_split,
    selection_score,
    summarize,
    target_boxes,
)
from simvg.inference import Grounder
from simvg.metrics import grec_metrics


@pytest.fixture(scope="module")
def grounder(tiny_run):
    return Grounder.from_pretrained(tiny_run / "last", device="cpu")


def evaluate(grounder, records, batch_size=4):
    dataset = GroundingDataset(records, grounder.preprocessor, train=False)
    loader = evaluation_loader(dataset, batch_size, 0, grounder.tokenizer.pad_token_id)
    return predict_split(grounder.model, loader, ["token", "decoder"], torch.device("cpu"))


def test_single_target_split_has_both_protocols(grounder, synthref_root):
    records = load_records(synthref_root, "synthref", "val")
    results = evaluate(grounder, records, batch_size=5)
    metrics = summarize(results, batch_size=5)
    for branch, rows in results.items():
        m = metrics[branch]
        assert "f1_acc" not in m and m["count"] == len(rows) and m["official_batch_size"] == 5
        # SimVG's figure: per-batch accuracy of the IoU in the model's input frame, averaged.
        batches = sorted({r["batch"] for r in rows})
        per_batch = [[r["official_iou"] >= 0.5 for r in rows if r["batch"] == b] for b in batches]
        assert m["official_acc@0.5"] == pytest.approx(100 * sum(sum(b) / len(b) for b in per_batch) / len(per_batch))


def test_generalized_records_are_scored_as_grec(grounder, synthref_root):
    records = load_records(synthref_root, "synthref", "val")[:6]
    generalized = []
    for i, record in enumerate(records):
        record = copy.copy(record)
        if i % 3 == 0:  # no target
            record.boxes_xyxy, record.box_xyxy = [], None
        elif i % 3 == 1:  # two targets
            other = (0.0, 0.0, record.width / 4, record.height / 4)
            record.boxes_xyxy, record.box_xyxy = [record.box_xyxy, other], None
        else:
            record.boxes_xyxy = [record.box_xyxy]
        generalized.append(record)
    assert target_boxes(generalized[0]) == [] and len(target_boxes(generalized[1])) == 2
    assert target_boxes(records[2]) == [records[2].box_xyxy]
    results = evaluate(grounder, generalized)
    metrics = summarize(results)
    expressions = {i: len(r.expressions) for i, r in enumerate(generalized)}
    for branch, rows in results.items():
        m = metrics[branch]
        assert m["grec_count"] == len(rows) == sum(expressions.values())
        assert m["no_target_count"] == sum(n for i, n in expressions.items() if i % 3 == 0)
        assert m["count"] == sum(n for i, n in expressions.items() if i % 3 == 2)  # Acc@0.5: single-target part
        assert "official_acc@0.5" not in m
        expected = grec_metrics([(r["pred_boxes"], r["pred_scores"]) for r in rows], [r["gt_boxes"] for r in rows])
        assert (m["f1_acc"], m["n_acc"]) == (expected["f1_acc"], expected["n_acc"])
        assert m["acc@0.5"] == pytest.approx(expected["acc@0.5"])
        assert all(r["iou"] is None for r in rows if len(r["gt_boxes"]) != 1)
    # The best checkpoint of a generalized split is picked by F1-accuracy.
    assert selection_score(metrics, "token") == metrics["token"]["f1_acc"]
    mean = (metrics["token"]["f1_acc"] + metrics["decoder"]["f1_acc"]) / 2
    assert selection_score(metrics, "mean") == pytest.approx(mean)
