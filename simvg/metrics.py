"""Grounding metrics.

- Acc@0.5 (SimVG's metric), Acc@0.75, mean IoU, per expression type, in original pixels;
- SimVG's own protocol: IoU in the resized frame, Acc@0.5 averaged per batch;
- generalized grounding (GREC): F1-accuracy, N-acc, Acc@0.5 on the single-target part;
- how well a score ranks answers: AUROC (right vs wrong or no-target), reliability bins and
  their plot.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata
from torchvision.ops import box_convert, box_iou, generalized_box_iou


def paired_box_iou(pred_xyxy: torch.Tensor, gt_xyxy: torch.Tensor) -> torch.Tensor:
    """IoU of each predicted box with its own ground truth: (N, 4), (N, 4) xyxy -> (N,)."""
    if len(pred_xyxy) == 0:
        return torch.zeros(0)
    return box_iou(pred_xyxy.double(), gt_xyxy.double()).diagonal().float()


def grounding_metrics(ious: Sequence[float] | torch.Tensor, types: Sequence[str | None] | None = None) -> dict:
    """Metrics over expressions, each counted once.

    Returns {"acc@0.5", "acc@0.75", "miou" (percent), "count", "per_type": {type: {"acc@0.5", "count"}}}.
    """
    ious = torch.as_tensor(ious, dtype=torch.float32)
    count = len(ious)
    metrics = {
        "acc@0.5": 100.0 * float((ious >= 0.5).float().mean()) if count else 0.0,
        "acc@0.75": 100.0 * float((ious >= 0.75).float().mean()) if count else 0.0,
        "miou": 100.0 * float(ious.mean()) if count else 0.0,
        "count": count,
    }
    if types is not None and any(t is not None for t in types):
        groups: dict[str, list[float]] = defaultdict(list)
        for iou, kind in zip(ious.tolist(), types):
            groups[str(kind)].append(iou)
        metrics["per_type"] = {
            kind: {"acc@0.5": 100.0 * sum(v >= 0.5 for v in values) / len(values), "count": len(values)}
            for kind, values in sorted(groups.items())
        }
    return metrics


# SimVG's own protocol (its apis/test.py): boxes compared in the model's input frame (the
# resized image), Acc@0.5 averaged per evaluation batch, then over batches.


def resized_frame_iou(
    pred_cxcywh: torch.Tensor, gt_xyxy: torch.Tensor, size: int, scales: torch.Tensor, image_sizes: torch.Tensor
) -> torch.Tensor:
    """IoU of each prediction with its ground truth in the S x S model input, as SimVG
    measures it: the predicted box clipped to the input, the ground truth first clipped to
    (0, 0, width - 1, height - 1) in original pixels, then scaled into the input.

    pred_cxcywh: (N, 4) normalised cx, cy, w, h in the input frame; gt_xyxy: (N, 4) original
    pixels; scales: (N, 2) input pixels per original pixel (x, y); image_sizes: (N, 2)
    original (width, height). Returns (N,) float.
    """
    if len(pred_cxcywh) == 0:
        return torch.zeros(0)
    pred = (box_convert(pred_cxcywh.double(), "cxcywh", "xyxy") * size).clamp(0, size)
    limits = (image_sizes.double() - 1).repeat(1, 2)
    gt = torch.minimum(gt_xyxy.double().clamp(min=0), limits) * scales.double().repeat(1, 2)
    return box_iou(pred, gt).diagonal().float()


def batch_mean_accuracy(ious_by_batch: Sequence[Sequence[float]], threshold: float = 0.5) -> float:
    """SimVG's reported accuracy (percent): the share of IoUs >= ``threshold`` in each batch,
    averaged over the batches (a smaller last batch weighs as much as a full one). Empty
    batches are skipped; 0.0 when there is none."""
    accuracies = [sum(v >= threshold for v in batch) / len(batch) for batch in ious_by_batch if len(batch)]
    return 100.0 * sum(accuracies) / len(accuracies) if accuracies else 0.0


# Generalized grounding (GREC, gRefCOCO): a phrase may name no object or several.

GREC_SCORE_THRESHOLD = 0.7
GREC_IOU_THRESHOLD = 0.5


@dataclass(frozen=True)
class GrecMatch:
    """The kept predictions of one sample matched to its ground-truth boxes."""

    true_positives: int
    false_positives: int
    false_negatives: int

    @property
    def f1(self) -> float:
        """F1 of the match; 1.0 for a no-target sample with no kept prediction."""
        tp, fp, fn = self.true_positives, self.false_positives, self.false_negatives
        return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)

    @property
    def correct(self) -> bool:
        """GREC counts a sample as correct only when its F1 is 1."""
        return self.false_positives == 0 and self.false_negatives == 0


def _as_boxes(boxes: Sequence[Sequence[float]] | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)


def grec_match(
    pred_boxes: Sequence[Sequence[float]] | torch.Tensor,
    pred_scores: Sequence[float] | torch.Tensor,
    gt_boxes: Sequence[Sequence[float]] | torch.Tensor,
    score_threshold: float = GREC_SCORE_THRESHOLD,
    iou_threshold: float = GREC_IOU_THRESHOLD,
) -> GrecMatch:
    """Match one sample's predictions to its ground truth as SimVG's GREC evaluation does
    (``grec_evaluate_f1_nacc`` in its apis/test.py).

    Predictions with score >= ``score_threshold`` are kept. Then, greedily, the (prediction,
    ground truth) pair with the highest *generalized* IoU is matched if that GIoU is >=
    ``iou_threshold``, both leave the pool, and so on (at most min(kept, ground truths)
    times). The official code computes GIoU for this step (its threshold is named
    ``thresh_iou``); so does this function. Unmatched kept predictions are false positives,
    unmatched ground truths false negatives.

    pred_boxes: (Q, 4) xyxy; pred_scores: (Q,); gt_boxes: (G, 4) xyxy in the same frame, G may
    be 0 (no target). The frame does not matter: GIoU is unchanged by scaling x and y.
    """
    boxes, scores, gt = _as_boxes(pred_boxes), torch.as_tensor(pred_scores, dtype=torch.float64).reshape(-1), _as_boxes(gt_boxes)
    if len(boxes) != len(scores):
        raise ValueError(f"{len(boxes)} predicted boxes but {len(scores)} scores")
    kept = boxes[scores >= score_threshold]
    if len(kept) == 0 or len(gt) == 0:
        return GrecMatch(0, len(kept), len(gt))
    giou = torch.nan_to_num(generalized_box_iou(kept, gt), nan=-1.0)  # a degenerate box matches nothing
    matched = 0
    for _ in range(min(len(kept), len(gt))):
        best = int(giou.argmax())
        row, column = divmod(best, len(gt))
        if giou[row, column] < iou_threshold:
            break
        matched += 1
        giou[row, :] = -math.inf
        giou[:, column] = -math.inf
    return GrecMatch(matched, len(kept) - matched, len(gt) - matched)


def top_prediction(
    pred_boxes: Sequence[Sequence[float]] | torch.Tensor, pred_scores: Sequence[float] | torch.Tensor
) -> tuple[torch.Tensor, float]:
    """The highest-scoring box (4,) and its score; the first such box on ties."""
    boxes, scores = _as_boxes(pred_boxes), torch.as_tensor(pred_scores, dtype=torch.float64).reshape(-1)
    if len(boxes) == 0 or len(boxes) != len(scores):
        raise ValueError(f"need one score per box and at least one box, got {len(boxes)} boxes, {len(scores)} scores")
    best = int(scores.argmax())
    return boxes[best], float(scores[best])


def answer_is_right(
    pred_boxes: Sequence[Sequence[float]] | torch.Tensor,
    pred_scores: Sequence[float] | torch.Tensor,
    gt_boxes: Sequence[Sequence[float]] | torch.Tensor,
    iou_threshold: float = 0.5,
) -> bool:
    """Whether the sample's single answer (its highest-scoring box) is right: IoU >=
    ``iou_threshold`` with one of the ground-truth boxes. Always False for a no-target
    sample: there, any box is a wrong answer."""
    gt = _as_boxes(gt_boxes)
    if len(gt) == 0:
        return False
    box, _ = top_prediction(pred_boxes, pred_scores)
    return bool(box_iou(box[None], gt).max() >= iou_threshold)


def grec_metrics(
    predictions: Sequence[tuple[Sequence[Sequence[float]], Sequence[float]]],
    gt_sets: Sequence[Sequence[Sequence[float]]],
    score_threshold: float = GREC_SCORE_THRESHOLD,
    iou_threshold: float = GREC_IOU_THRESHOLD,
) -> dict:
    """GREC metrics over samples, each counted once (percent).

    predictions: per sample (pred_boxes (Q, 4) xyxy, pred_scores (Q,)); gt_sets: per sample
    its ground-truth boxes (G, 4) xyxy in the same frame, possibly none.
    Returns {"f1_acc": share of samples whose match (:func:`grec_match`) has F1 = 1,
    "n_acc": share of no-target samples with no prediction kept (None without no-target
    samples), "acc@0.5": share of single-target samples whose highest-scoring box, whatever
    its score, has IoU >= 0.5 with the target (None without single-target samples),
    "count", "no_target_count", "single_target_count", "multi_target_count"}.

    SimVG averages F1-accuracy and N-acc per evaluation batch (and gives N-acc 0 to a batch
    without no-target samples); these are over samples.
    """
    if len(predictions) != len(gt_sets):
        raise ValueError(f"{len(predictions)} predictions but {len(gt_sets)} ground-truth sets")
    correct = no_target = no_target_right = single = single_right = multi = 0
    for (boxes, scores), gt in zip(predictions, gt_sets):
        gt = _as_boxes(gt)
        match = grec_match(boxes, scores, gt, score_threshold, iou_threshold)
        correct += match.correct
        if len(gt) == 0:
            no_target += 1
            no_target_right += match.false_positives == 0
        elif len(gt) == 1:
            single += 1
            single_right += answer_is_right(boxes, scores, gt)
        else:
            multi += 1
    count = len(gt_sets)
    return {
        "f1_acc": 100.0 * correct / count if count else 0.0,
        "n_acc": 100.0 * no_target_right / no_target if no_target else None,
        "acc@0.5": 100.0 * single_right / single if single else None,
        "count": count,
        "no_target_count": no_target,
        "single_target_count": single,
        "multi_target_count": multi,
    }


# Scores that rank: does a higher score mean a right answer?


def auroc(scores: Sequence[float], positives: Sequence[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` for telling ``positives`` (True) from the rest:
    the probability that a random positive scores above a random negative, ties counting
    one half (the Mann-Whitney statistic). None when either class is empty."""
    scores_array = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(positives, dtype=bool)
    if scores_array.shape != labels.shape:
        raise ValueError(f"{scores_array.shape[0]} scores but {labels.shape[0]} labels")
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores_array)  # ties get their average rank
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def reliability_bins(scores: Sequence[float], right: Sequence[bool], num_bins: int = 10) -> list[dict]:
    """Scores in [0, 1] cut into ``num_bins`` equal-width bins (the last includes 1.0): per bin
    {"low", "high", "count", "mean_score", "accuracy" (share right)}; the last two are None
    for an empty bin. A calibrated score has accuracy close to mean_score in every bin."""
    scores_array = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    right_array = np.asarray(right, dtype=bool)
    index = np.minimum((scores_array * num_bins).astype(int), num_bins - 1)
    bins = []
    for b in range(num_bins):
        inside = index == b
        count = int(inside.sum())
        bins.append({
            "low": b / num_bins,
            "high": (b + 1) / num_bins,
            "count": count,
            "mean_score": float(scores_array[inside].mean()) if count else None,
            "accuracy": float(right_array[inside].mean()) if count else None,
        })  # fmt: skip
    return bins


def expected_calibration_error(bins: Sequence[dict]) -> float:
    """Sum over bins of (share of samples in the bin) x |accuracy - mean score| (0 = calibrated)."""
    total = sum(b["count"] for b in bins)
    if total == 0:
        return 0.0
    return sum(b["count"] / total * abs(b["accuracy"] - b["mean_score"]) for b in bins if b["count"])


def plot_reliability(bins: Sequence[dict], path: str | Path, title: str = "") -> None:
    """Write a reliability diagram (PNG): per bin the share of right answers against the mean
    score (the diagonal is a calibrated score), over a histogram of the scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    width = bins[0]["high"] - bins[0]["low"] if bins else 0.1
    filled = [b for b in bins if b["count"]]
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="calibrated")
    top.bar([(b["low"] + b["high"]) / 2 for b in filled], [b["accuracy"] for b in filled], width=width * 0.9,
            color="tab:blue", alpha=0.7, label="share right")  # fmt: skip
    top.plot([b["mean_score"] for b in filled], [b["accuracy"] for b in filled], "o", color="tab:red", markersize=4,
             label="(mean score, share right)")  # fmt: skip
    top.set_ylim(0, 1)
    top.set_ylabel("share of right answers")
    top.legend(loc="upper left", fontsize=8)
    if title:
        top.set_title(title, fontsize=10)
    bottom.bar(centres, [b["count"] for b in bins], width=width * 0.9, color="tab:gray")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("score")
    bottom.set_ylabel("answers")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
