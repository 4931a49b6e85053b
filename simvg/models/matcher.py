"""DETR's Hungarian matching between predicted boxes and a set of target boxes.

Each image's predictions (queries, or cells) are matched one-to-one to its targets so that
the summed cost is lowest; the cost of a pair is DETR's (and SimVG's):
``-class_cost * P(object) + l1_cost * L1 + giou_cost * (-GIoU)``. An image with no target gets
no pair; with more targets than predictions, some targets stay unmatched.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou

OBJECT, NO_OBJECT = 0, 1

Match = tuple[torch.Tensor, torch.Tensor]


@torch.no_grad()
def match_cost(logits: torch.Tensor, boxes: torch.Tensor, targets: torch.Tensor,
               costs: tuple[float, float, float] = (1.0, 5.0, 2.0)) -> torch.Tensor:  # fmt: skip
    """The cost of every (prediction, target) pair of one image: logits (P, 2), boxes (P, 4),
    targets (T, 4), boxes normalised cxcywh; costs (class, L1, GIoU) -> (P, T)."""
    class_cost, l1_cost, giou_cost = costs
    prob = logits.float().softmax(-1)[:, OBJECT]
    boxes, targets = boxes.float(), targets.float().to(boxes.device)
    l1 = torch.cdist(boxes, targets, p=1)
    giou = generalized_box_iou(
        box_convert(boxes, "cxcywh", "xyxy"), box_convert(targets, "cxcywh", "xyxy")
    )
    return -class_cost * prob[:, None] + l1_cost * l1 - giou_cost * giou


@torch.no_grad()
def hungarian_match(logits: torch.Tensor, boxes: torch.Tensor, target_sets: list[torch.Tensor],
                    costs: tuple[float, float, float] = (1.0, 5.0, 2.0)) -> list[Match]:  # fmt: skip
    """Per image, the (prediction indices, target indices) of the lowest-cost one-to-one
    matching, each (min(P, T_i),) int64 on ``logits``' device, sorted by prediction index.

    logits: (B, P, 2); boxes: (B, P, 4); target_sets: B tensors (T_i, 4), T_i may be 0; boxes
    normalised cxcywh; costs: (class, L1, GIoU) weights of :func:`match_cost`.
    """
    device = logits.device
    sizes = [len(t) for t in target_sets]
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    if sum(sizes) == 0:
        return [(empty, empty) for _ in sizes]
    batch, predictions = logits.shape[:2]
    # Every prediction against every target of the batch at once (as DETR), then per image.
    targets = torch.cat([t.to(device) for t in target_sets])
    cost = match_cost(logits.flatten(0, 1), boxes.flatten(0, 1), targets, costs).view(
        batch, predictions, -1
    )
    if not torch.isfinite(cost).all():
        raise ValueError(
            "Hungarian matching: the predicted boxes give non-finite costs (the model's outputs hold NaN or inf)"
        )
    matches = []
    for i, image_cost in enumerate(cost.cpu().split(sizes, dim=-1)):
        if sizes[i] == 0:
            matches.append((empty, empty))
            continue
        rows, cols = linear_sum_assignment(image_cost[i].numpy())
        matches.append((torch.as_tensor(rows, dtype=torch.int64, device=device),
                        torch.as_tensor(cols, dtype=torch.int64, device=device)))  # fmt: skip
    return matches
