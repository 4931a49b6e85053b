"""Accuracy of a trained checkpoint on every SynthRef split, both branches, per expression
type, and how long its training took.

    python bench/teacher_report.py runs/teacher/best --data-root DATA --run runs/teacher \
        [--out bench/results/teacher.md]

Where the val misses land: on another object of the scene (IoU >= 0.5 with it: the phrase was
misread) or on no object (a box between candidates or badly placed: localisation). For the
token branch's relational phrases, by relation: on another candidate (an object that fits the
phrase's target words, e.g. another circle for "the circle closest to the red square"), on
the landmark itself, or elsewhere.

Training time: the run's wall-clock minutes (summed over resumed parts, from the training
process's own summaries in ``--log``; the stem's pretraining phase included and also given
alone) and the steps, batch and median images/s of train_log.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch
from torchvision.ops import box_iou

SPLITS = ("val", "testA", "testB")


def evaluate(checkpoint: str, data_root: str, split: str, predictions: Path | None = None) -> dict:
    cmd = [sys.executable, "-m", "simvg", "eval", checkpoint, "--data-root", data_root, "--dataset", "synthref",
           "--split", split, "--branch", "both", "--json"]  # fmt: skip
    if predictions is not None:
        cmd += ["--save-predictions", str(predictions)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)["metrics"]


def where_predictions_land(predictions: Path, data_root: str, split: str) -> dict[str, Counter]:
    """Per branch: how many predictions hit the referred object, another object of the scene
    (IoU >= 0.5 with it) or no object, from a --save-predictions file and SynthRef's object lists."""
    records = json.loads((Path(data_root) / "annotations" / "synthref" / "instances.json").read_text())[split]
    objects = {r["ref_id"]: torch.tensor([o["bbox"] for o in r["objects"]], dtype=torch.float) for r in records}
    counts: dict[str, Counter] = {}
    for line in predictions.read_text().splitlines():
        p = json.loads(line)
        xywh = objects[p["ref_id"]]
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        overlaps_any = bool((box_iou(torch.tensor([p["pred_box"]]), boxes) >= 0.5).any())
        outcome = "hit" if p["iou"] >= 0.5 else "other object" if overlaps_any else "no object"
        counts.setdefault(p["branch"], Counter())[outcome] += 1
    return counts


def _xyxy(xywh: list[float]) -> list[float]:
    return [xywh[0], xywh[1], xywh[0] + xywh[2], xywh[1] + xywh[3]]


def token_predictions(predictions: Path, data_root: str, split: str, op: str) -> Iterator[tuple[dict, dict, dict]]:
    """(prediction, SynthRef record, program) for each token-branch prediction whose phrase's
    program has operation ``op`` ("relate", "unique", ...)."""
    records = json.loads((Path(data_root) / "annotations" / "synthref" / "instances.json").read_text())[split]
    by_ref = {r["ref_id"]: r for r in records}
    for line in predictions.read_text().splitlines():
        p = json.loads(line)
        record = by_ref[p["ref_id"]]
        program = record["programs"][record["expressions"].index(p["expression"])]
        if p["branch"] == "token" and program["op"] == op:
            yield p, record, program


def relations_breakdown(predictions: Path, data_root: str, split: str) -> dict[str, Counter]:
    """Token branch, relational phrases, per relation ("left", ..., "closest", "farthest"):
    counts of "hit", "candidate" (another object fitting the target's words), "landmark",
    "other object" and "no object", from SynthRef's programs and object lists."""
    fits = lambda desc, obj: all(v is None or obj[k] == v for k, v in desc.items())  # noqa: E731
    counts: dict[str, Counter] = {}
    for p, record, program in token_predictions(predictions, data_root, split, "relate"):
        landmarks = [o for o in record["objects"] if fits(program["landmark"], o)]
        candidates = [o for o in record["objects"] if fits(program["target"], o) and o not in landmarks[:1]]
        counts.setdefault(program["arg"], Counter())["chance"] += 1 / max(1, len(candidates))
        boxes = torch.tensor([_xyxy(o["bbox"]) for o in record["objects"]])
        overlaps = box_iou(torch.tensor([p["pred_box"]]), boxes)[0]
        best = int(overlaps.argmax())
        if p["iou"] >= 0.5:
            outcome = "hit"
        elif overlaps[best] < 0.5:
            outcome = "no object"
        elif fits(program["landmark"], record["objects"][best]):
            outcome = "landmark"
        elif fits(program["target"], record["objects"][best]):
            outcome = "candidate"
        else:
            outcome = "other object"
        counts.setdefault(program["arg"], Counter())[outcome] += 1
    return counts


def attribute_words_breakdown(predictions: Path, data_root: str, split: str) -> dict[str, list[int]]:
    """Token branch, attribute phrases ("the purple star"), by which of size / colour / shape
    the phrase names: [hits, phrases], from SynthRef's programs."""
    counts: dict[str, list[int]] = {}
    for p, _, program in token_predictions(predictions, data_root, split, "unique"):
        named = " + ".join(k for k in ("size", "color", "shape") if program["target"][k] is not None)
        tally = counts.setdefault(named.replace("color", "colour"), [0, 0])
        tally[0] += p["iou"] >= 0.5
        tally[1] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--run", type=Path, help="the training output directory (for train_log.csv)")
    parser.add_argument("--log", type=Path, help="the training command's stdout (JSON summaries with minutes)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "teacher.md")
    args = parser.parse_args()

    lines = ["| split | branch | Acc@0.5 | Acc@0.75 | mIoU | attribute | location | relation | comparison | expressions |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    scratch_dir = tempfile.TemporaryDirectory()
    scratch = Path(scratch_dir.name)
    for split in SPLITS:
        predictions = scratch / "val.jsonl" if split == "val" else None
        for branch, m in evaluate(args.checkpoint, args.data_root, split, predictions).items():
            types = m.get("per_type", {})
            cells = [f"{types[t]['acc@0.5']:.1f}" if t in types else "–" for t in ("attribute", "location", "relation", "comparison")]
            lines.append(f"| {split} | {branch} | {m['acc@0.5']:.2f} | {m['acc@0.75']:.2f} | {m['miou']:.2f} | "
                         f"{' | '.join(cells)} | {m['count']} |")  # fmt: skip
    lines += ["", "Where the val predictions land:", "",
              "| branch | referred object | another object | no object |", "|---|---|---|---|"]  # fmt: skip
    for branch, counts in where_predictions_land(scratch / "val.jsonl", args.data_root, "val").items():
        total = sum(counts.values())
        cells = " | ".join(f"{100 * counts[k] / total:.1f}%" for k in ("hit", "other object", "no object"))
        lines.append(f"| {branch} | {cells} |")
    lines += ["", "Relational val phrases by relation (token branch): where the prediction lands:", "",
              "| relation | expressions | referred object | random candidate (chance) | another candidate | the landmark "
              "| other object | no object |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for relation, counts in sorted(relations_breakdown(scratch / "val.jsonl", args.data_root, "val").items()):
        total = sum(v for k, v in counts.items() if k != "chance")
        kinds = ("hit", "chance", "candidate", "landmark", "other object", "no object")
        lines.append(f"| {relation} | {total} | " + " | ".join(f"{100 * counts[k] / total:.1f}%" for k in kinds) + " |")
    lines += ["", "Attribute phrases (token branch, val) by the words that single the object out:", "",
              "| words | phrases | referred object |", "|---|---|---|"]  # fmt: skip
    for named, (hits, total) in sorted(attribute_words_breakdown(scratch / "val.jsonl", args.data_root, "val").items()):
        lines.append(f"| {named} | {total} | {100 * hits / total:.1f}% |")
    scratch_dir.cleanup()
    if args.run and (args.run / "train_log.csv").is_file():
        rows = list(csv.DictReader((args.run / "train_log.csv").open()))
        config = json.loads((args.run / "config.json").read_text())
        rate = statistics.median(float(r["images_per_s"]) for r in rows)
        steps, batch = int(rows[-1]["step"]), config["train"]["batch_size"]
        lines += ["", f"Training: {steps} steps at batch {batch}; median {rate:.1f} images/s "
                  f"(= {steps * batch / rate / 60:.1f} minutes of training steps at that rate)."]  # fmt: skip
    if args.log and args.log.is_file():
        summaries = [json.loads(line) for line in args.log.read_text().splitlines()
                     if line.startswith("{") and '"minutes"' in line]  # fmt: skip
        minutes = [s["minutes"] for s in summaries]
        lines.append(f"Wall clock of the training command(s), evaluation included: {sum(minutes):.1f} minutes "
                     f"({' + '.join(f'{m:.1f}' for m in minutes)}).")  # fmt: skip
        pretrain = sum(s.get("stem_pretrain_minutes", 0.0) for s in summaries)
        if pretrain:
            lines.append(f"Of which the stem's pretraining (train.stem_pretrain_steps): {pretrain:.1f} minutes.")
    text = "\n".join(lines) + f"\n\nCommand: `python bench/teacher_report.py {' '.join(sys.argv[1:])}`\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
