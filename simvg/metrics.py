"""Grounding accuracy: Acc@0.5 (SimVG's metric), Acc@0.75, mean IoU, per expression type."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from torchvision.ops import box_iou


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
