"""Does a model's score rank its answers? AUROC of the score for right answers (IoU >= 0.5)
against wrong ones and answers to phrases that name nothing, and a reliability plot (the share
of right answers per score bin), from the predictions ``simvg eval --save-predictions`` writes.

    python -m simvg eval runs/teacher/best --data-root data --dataset synthref --split val \\
        --save-predictions runs/teacher/val_predictions.jsonl
    python bench/score_ranking.py runs/teacher/val_predictions.jsonl [--out bench/results/score_ranking]

A row is right when its "iou" is at least 0.5; a row without a ground-truth box ("gt_box" null
or empty: a no-target phrase) is wrong whatever its box. Writes, per branch, the AUROC to
OUT.json and the reliability plot to OUT_<branch>.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import mannwhitneyu


def auroc(scores: np.ndarray, right: np.ndarray) -> float | None:
    """The probability that a right answer scores above a wrong one (ties count half): the
    Mann-Whitney U statistic over the number of pairs; None without both kinds."""
    positive, negative = scores[right], scores[~right]
    if len(positive) == 0 or len(negative) == 0:
        return None
    return float(mannwhitneyu(positive, negative).statistic / (len(positive) * len(negative)))


def reliability(scores: np.ndarray, right: np.ndarray, bins: int = 10) -> list[dict]:
    """Per score bin [k/bins, (k+1)/bins): its answers' count, mean score and share right."""
    rows = []
    index = np.minimum((scores * bins).astype(int), bins - 1)
    for k in range(bins):
        inside = index == k
        if inside.any():
            rows.append({"bin": [k / bins, (k + 1) / bins], "count": int(inside.sum()),
                         "mean_score": float(scores[inside].mean()), "share_right": float(right[inside].mean())})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "score_ranking")
    args = parser.parse_args()
    per_branch: dict[str, list[dict]] = {}
    for line in args.predictions.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            per_branch.setdefault(row.get("branch", "token"), []).append(row)
    report = {}
    for branch, rows in per_branch.items():
        scores = np.array([float(r["score"]) for r in rows])
        right = np.array([bool(r.get("gt_box")) and r.get("iou") is not None and r["iou"] >= 0.5 for r in rows])
        table = reliability(scores, right)
        report[branch] = {"count": len(rows), "right": int(right.sum()), "auroc": auroc(scores, right), "reliability": table}
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(4, 4))
        axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        axis.plot([t["mean_score"] for t in table], [t["share_right"] for t in table], marker="o")
        axis.set(xlabel="score", ylabel="share right (IoU >= 0.5)", xlim=(0, 1), ylim=(0, 1),
                 title=f"{branch} branch: AUROC {report[branch]['auroc'] or float('nan'):.3f}")  # fmt: skip
        figure.tight_layout()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(f"{args.out}_{branch}.png", dpi=120)
        plt.close(figure)
        print(f"{branch}: {len(rows)} answers, {int(right.sum())} right, AUROC {report[branch]['auroc']}")
    Path(f"{args.out}.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
