"""Does a checkpoint's score rank its answers? On one split, each expression's answer is the
branch's highest-scoring box; it is *right* when its IoU with one of the record's target boxes
is >= 0.5, *wrong* otherwise, and always wrong on a no-target expression (any box is). Reports
the AUROC of the score for right against wrong-or-no-target answers (and against each kind
alone), the expected calibration error, a reliability table and plot, and, on a generalized
split, the GREC metrics (F1-accuracy, N-acc, and the share right per kind of phrase).

    python bench/score_ranking.py runs/teacher/best --data-root data --dataset synthref-g --split val

Writes bench/results/score_ranking.md and bench/results/score_ranking.png (--out, --png).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from simvg.benchmark import save_table
from simvg.data.dataset import GroundingDataset
from simvg.data.readers import load_records
from simvg.engine.evaluate import evaluation_loader, predict_split, summarize
from simvg.inference import Grounder
from simvg.metrics import (
    answer_is_right,
    auroc,
    expected_calibration_error,
    grec_match,
    plot_reliability,
    reliability_bins,
)

RESULTS = Path(__file__).resolve().parent / "results"


def ranking_report(rows: list[dict], num_bins: int = 10) -> dict:
    """Score-ranking figures of one branch's results (:func:`simvg.engine.evaluate.predict_split`)."""
    scores = [max(r["pred_scores"]) for r in rows]
    right = [answer_is_right(r["pred_boxes"], r["pred_scores"], r["gt_boxes"]) for r in rows]
    no_target = [not r["gt_boxes"] for r in rows]
    wrong_box = [not ok and not empty for ok, empty in zip(right, no_target)]

    def versus(negatives: list[bool]) -> float | None:
        kept = [i for i in range(len(rows)) if right[i] or negatives[i]]
        return auroc([scores[i] for i in kept], [right[i] for i in kept])

    bins = reliability_bins(scores, right, num_bins)
    return {
        "count": len(rows),
        "right": sum(right),
        "wrong_box": sum(wrong_box),
        "no_target": sum(no_target),
        "auroc": auroc(scores, right),
        "auroc_vs_wrong_box": versus(wrong_box),
        "auroc_vs_no_target": versus(no_target),
        "ece": expected_calibration_error(bins),
        "bins": bins,
    }


def correct_by_kind(rows: list[dict]) -> dict[str, tuple[float, int]]:
    """Per kind of phrase ("single", "multi", "none": by its number of targets), the share (%)
    of phrases the GREC protocol counts right (F1 = 1 at its thresholds) and their number."""
    counts = {"single": [0, 0], "multi": [0, 0], "none": [0, 0]}
    for r in rows:
        kind = "none" if not r["gt_boxes"] else "single" if len(r["gt_boxes"]) == 1 else "multi"
        counts[kind][0] += grec_match(r["pred_boxes"], r["pred_scores"], r["gt_boxes"]).correct
        counts[kind][1] += 1
    return {k: (100.0 * right / max(n, 1), n) for k, (right, n) in counts.items()}


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--image-root")
    parser.add_argument("--branch", choices=["token", "decoder"], default="token")
    parser.add_argument("--max-expressions", type=int, help="an evenly spaced subset")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--bins", type=int, default=10)
    parser.add_argument("--device", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=RESULTS / "score_ranking.md")
    parser.add_argument("--png", type=Path, default=RESULTS / "score_ranking.png")
    args = parser.parse_args()

    grounder = Grounder.from_pretrained(args.checkpoint, device=args.device)
    if args.branch not in grounder.branches:
        sys.exit(f"{args.checkpoint} has no {args.branch} branch")
    records = load_records(args.data_root, args.dataset, args.split, args.image_root)
    dataset = GroundingDataset(records, grounder.preprocessor, train=False, max_items=args.max_expressions)
    loader = evaluation_loader(dataset, args.batch_size, 0, grounder.tokenizer.pad_token_id)
    amp = torch.bfloat16 if grounder.device.type == "cuda" else None
    results = predict_split(grounder.model, loader, [args.branch], grounder.device, amp, progress=sys.stderr.isatty(),
                            nms_iou=grounder.config.model.head.answer_nms, merge=grounder.config.model.head.answer_merge)
    rows = results[args.branch]
    report = ranking_report(rows, args.bins)
    metrics = summarize(results, args.batch_size)[args.branch]

    title = f"{args.checkpoint}, {args.dataset} {args.split}, {args.branch} branch"
    lines = [
        f"Score ranking: {title} ({report['count']} expressions: {report['right']} right, {report['wrong_box']} "
        f"with a wrong box, {report['no_target']} without a target)",
        "",
        "| AUROC right vs wrong or no-target | vs wrong box | vs no-target | ECE | Acc@0.5 (single target) |",
        "|---|---|---|---|---|",
        f"| {fmt(report['auroc'])} | {fmt(report['auroc_vs_wrong_box'])} | {fmt(report['auroc_vs_no_target'])} | "
        f"{fmt(report['ece'])} | {metrics['acc@0.5']:.2f} ({metrics['count']}) |",
    ]
    if "f1_acc" in metrics:
        kinds = correct_by_kind(rows)
        lines += ["", "| F1-accuracy (score >= 0.7, GIoU >= 0.5) | N-acc | F1 = 1: single target | multi-target | no target |",
                  "|---|---|---|---|---|",
                  f"| {metrics['f1_acc']:.2f} | {fmt(metrics['n_acc'], 2)} | "
                  + " | ".join(f"{kinds[k][0]:.1f} ({kinds[k][1]})" for k in ("single", "multi", "none")) + " |"]  # fmt: skip
    lines += ["", "Reliability (share of right answers per score bin):", "",
              "| score | answers | mean score | share right |", "|---|---|---|---|"]  # fmt: skip
    for b in report["bins"]:
        lines.append(f"| {b['low']:.1f}-{b['high']:.1f} | {b['count']} | {fmt(b['mean_score'])} | {fmt(b['accuracy'])} |")
    plot_reliability(report["bins"], args.png, title=title)
    lines += ["", f"Plot: {args.png.name}"]
    save_table("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
