"""Losses of predictions matched to targets (DETR's set loss), and what a score learns.

A box's score is its object probability, softmax(logits)[..., 0]. With the score target
"label" (DETR's, SimVG's) a matched prediction learns "object" and every other "no object"
(weighted ``no_object_weight``), so a single-query branch trained on one target per phrase
scores every answer ~1. With "iou" a matched prediction's object probability learns the IoU
of its box with its target (detached): the score says how right the box is, and a phrase
with no target teaches every prediction "no object". With "hit" it learns whether that IoU
reaches 0.5: the score estimates the chance that the answer is right.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, box_iou, generalized_box_iou_loss

from simvg.models.matcher import NO_OBJECT, OBJECT, Match

__all__ = ["NO_OBJECT", "OBJECT", "class_loss", "matched_pairs", "paired_iou", "score_goal", "set_losses"]


def paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of each pair of rows: a, b (M, 4) normalised cxcywh -> (M,)."""
    return box_iou(
        box_convert(a.float(), "cxcywh", "xyxy"), box_convert(b.float(), "cxcywh", "xyxy")
    ).diagonal()


def score_goal(predicted: torch.Tensor, goals: torch.Tensor, score_target: str) -> torch.Tensor:
    """What an answering prediction's object probability learns (M,), from its box and its
    target (M, 4) normalised cxcywh: 1 ("label"), the two boxes' IoU ("iou"), or whether that
    IoU reaches 0.5, the box being right at Acc@0.5 ("hit")."""
    if score_target == "label":
        return torch.ones(len(predicted), device=predicted.device)
    iou = paired_iou(predicted, goals)
    return (iou >= 0.5).float() if score_target == "hit" else iou


def class_loss(
    logits: torch.Tensor, object_target: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of 2-way logits (..., 2) against soft targets: ``object_target`` (...) is
    the probability the prediction should give "object" (1 or an IoU; 0 = "no object");
    the mean is weighted by ``weights`` (...). With 0/1 targets and weights 1 (object) /
    ``no_object_weight`` (no object) it is ``F.cross_entropy`` with class weights."""
    log_prob = F.log_softmax(logits.float(), dim=-1)
    target = object_target.float()
    per_prediction = -(target * log_prob[..., OBJECT] + (1 - target) * log_prob[..., NO_OBJECT])
    return (per_prediction * weights).sum() / weights.sum().clamp_min(1e-12)


def matched_pairs(boxes: torch.Tensor, target_sets: list[torch.Tensor], matches: list[Match]):
    """(image indices (M,), prediction indices (M,), matched predicted boxes (M, 4), their
    targets (M, 4)) of every matched pair in the batch; boxes (B, P, 4)."""
    images = torch.cat([torch.full_like(pred, i) for i, (pred, _) in enumerate(matches)])
    preds = torch.cat([pred for pred, _ in matches])
    goals = [t[j].to(boxes.device, torch.float32) for t, (_, j) in zip(target_sets, matches)]
    return (
        images,
        preds,
        boxes[images, preds].float(),
        torch.cat(goals) if goals else boxes.new_zeros(0, 4),
    )


def set_losses(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    target_sets: list[torch.Tensor],
    matches: list[Match],
    no_object_weight: float,
    score_target: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DETR's losses of one branch's predictions: (class cross-entropy, L1, 1 - GIoU).

    logits: (B, P, 2); boxes: (B, P, 4) normalised cxcywh; target_sets: B tensors (T_i, 4);
    matches: from :func:`~simvg.models.matcher.hungarian_match`. The class loss is over every
    prediction (unmatched ones learn "no object", weighted ``no_object_weight``; matched ones
    learn :func:`score_goal`); L1 (summed over the 4
    coordinates) and 1 - GIoU are summed over the matched pairs and divided by the number of
    target boxes in the batch (at least 1), as DETR does.
    """
    images, preds, predicted, goals = matched_pairs(boxes, target_sets, matches)
    object_target = torch.zeros(logits.shape[:2], device=logits.device)
    weights = torch.full(logits.shape[:2], no_object_weight, device=logits.device)
    object_target[images, preds] = score_goal(predicted.detach(), goals, score_target)
    weights[images, preds] = 1.0
    ce = class_loss(logits, object_target, weights)
    num_boxes = max(sum(len(t) for t in target_sets), 1)
    if len(preds) == 0:  # no target in the batch: the boxes learn nothing (kept in the graph)
        zero = boxes.float().sum() * 0.0
        return ce, zero, zero
    l1 = (predicted - goals).abs().sum() / num_boxes
    xyxy = box_convert(predicted, "cxcywh", "xyxy"), box_convert(goals, "cxcywh", "xyxy")
    giou = generalized_box_iou_loss(*xyxy, reduction="sum") / num_boxes
    return ce, l1, giou
