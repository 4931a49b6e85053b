"""From model outputs to one box and score per phrase."""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms, box_convert, box_iou

from simvg.config import ANSWER_MERGES

BRANCHES = ("token", "decoder")


def select_boxes(outputs: dict, branch: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The predicted box and score of ``branch`` ("token" or "decoder").

    Returns boxes (B, 4) normalised cx, cy, w, h in the letterbox frame and scores (B,) the
    object probability; a branch with several queries (the decoder branch; a "simvg" token
    branch with num_queries > 1) keeps its most confident one.
    """
    if branch not in BRANCHES:
        raise ValueError(f"unknown branch '{branch}'; choose one of: {', '.join(BRANCHES)}")
    if branch not in outputs:
        raise ValueError(f"the model produced no '{branch}' branch output (does it have a decoder branch?)")
    out = outputs[branch]
    probs = out["logits"].float().softmax(-1)[..., 0]
    boxes = out["boxes"].float()
    if boxes.dim() == 3:
        best = probs.argmax(dim=1)
        rows = torch.arange(len(best), device=best.device)
        return boxes[rows, best], probs[rows, best]
    return boxes, probs


def query_boxes(
    outputs: dict, branch: str, nms_iou: float = 0.0, merge: str = "max"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every query's box and score of ``branch`` ("token" or "decoder") in the model's outputs.

    Returns boxes (B, Q, 4) normalised cx, cy, w, h in the letterbox frame and scores (B, Q),
    the object probability softmax(logits)[..., 0]; a branch with one box per sample (logits
    (B, 2)) has Q = 1. With ``nms_iou`` > 0 (``model.head.answer_nms``) a query whose box
    overlaps a higher-scored one of its sample at IoU > ``nms_iou`` is a duplicate of it and
    scores 0 (non-maximum suppression); the best-scored query always stays. ``merge``
    (``model.head.answer_merge``): what a kept query scores, "max" its own score, "sum" its own
    plus those of the duplicates it suppressed, at most 1 (see :func:`merge_duplicates`).
    """
    if branch not in BRANCHES:
        raise ValueError(f"unknown branch '{branch}'; choose one of: {', '.join(BRANCHES)}")
    if branch not in outputs:
        raise ValueError(f"the model produced no '{branch}' branch output (does it have a decoder branch?)")
    out = outputs[branch]
    logits, boxes = out["logits"].float(), out["boxes"].float()
    if logits.dim() == 2:
        logits, boxes = logits[:, None], boxes[:, None]
    scores = logits.softmax(-1)[..., 0]
    if merge not in ANSWER_MERGES:
        raise ValueError(f"unknown answer merge '{merge}'; choose one of: {', '.join(ANSWER_MERGES)}")
    if nms_iou > 0 and scores.shape[1] > 1:
        merged = suppress_duplicates if merge == "max" else merge_duplicates
        scores = merged(boxes, scores, nms_iou)
    return boxes, scores


def suppress_duplicates(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    """``scores`` (B, Q) with every query whose box (B, Q, 4, normalised cxcywh) overlaps a
    higher-scored box of the same sample at IoU > ``iou`` set to 0 (torchvision's NMS)."""
    return scores * kept_queries(boxes, scores, iou)


def kept_queries(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    """(B, Q) bool: the queries that torchvision's NMS at ``iou`` keeps in each sample."""
    b, q = scores.shape
    flat = box_convert(boxes.reshape(-1, 4), "cxcywh", "xyxy")
    samples = torch.arange(b, device=scores.device).repeat_interleave(q)
    kept = batched_nms(flat, scores.reshape(-1), samples, iou)
    mask = torch.zeros(b * q, dtype=torch.bool, device=scores.device)
    mask[kept] = True
    return mask.view(b, q)


def merge_duplicates(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    """:func:`suppress_duplicates`, where a kept query scores its own score plus those of the
    queries it suppressed (each suppressed by the best-scored kept box it overlaps at IoU >
    ``iou``, as greedy NMS does), at most 1. ``boxes`` (B, Q, 4) normalised cxcywh, ``scores``
    (B, Q) in [0, 1]; returns (B, Q), 0 for suppressed queries.

    For cells trained so that exactly one cell (the centre's) answers each target, the cells
    on one object hold exclusive chances of being that cell, so their sum is the chance that
    the object is a target; the kept cell alone understates it where the centre falls near a
    cell border."""
    kept = kept_queries(boxes, scores, iou)
    xyxy = box_convert(boxes, "cxcywh", "xyxy")
    overlap = torch.stack([box_iou(sample, sample) for sample in xyxy])  # (B, Q, Q)
    suppressor = (overlap > iou) & kept[:, None, :]  # (B, query, kept query)
    suppressor |= torch.eye(scores.shape[1], dtype=torch.bool, device=scores.device) & kept[:, None, :]
    owner = torch.where(suppressor, scores[:, None, :], -1.0).argmax(dim=-1)  # (B, Q)
    owned = suppressor.any(dim=-1)
    merged = torch.zeros_like(scores).scatter_add_(1, owner, scores * owned)
    return merged.clamp(max=1.0) * kept
