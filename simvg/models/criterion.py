"""SimVG's training loss: DETR-style losses per branch and dynamic weight-balance distillation.

The criterion returns a dict of named, unweighted losses; ``weight_dict`` holds each one's
weight, and the total is ``sum(losses[k] * weight_dict[k] for k in weight_dict)``. DWBD's
per-batch factors (1 - w) and w are already applied to the token-branch entries, because
they change every step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert, box_iou, generalized_box_iou_loss

from distill.losses import box_distillation_loss
from simvg.config import LossConfig
from simvg.models.heads.grid import grid_centres

OBJECT, NO_OBJECT = 0, 1


def box_losses(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean L1 (summed over the 4 coordinates) and mean 1 - GIoU; boxes (B, 4) normalised cxcywh."""
    parts = box_distillation_loss(pred.float(), target.float(), weights, l1_weight=1.0, giou_weight=1.0)
    return parts["loss_box_kd_l1"], parts["loss_box_kd_giou"]


def paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of each pair of rows: a, b (B, 4) normalised cxcywh -> (B,)."""
    return box_iou(box_convert(a.float(), "cxcywh", "xyxy"), box_convert(b.float(), "cxcywh", "xyxy")).diagonal()


def match_queries(logits: torch.Tensor, boxes: torch.Tensor, targets: torch.Tensor, config: LossConfig) -> torch.Tensor:
    """For one target per image, the query with the lowest DETR matching cost (exactly what
    Hungarian matching gives for a single target). logits (B, Q, 2), boxes (B, Q, 4) -> (B,)."""
    with torch.no_grad():
        prob = logits.float().softmax(-1)[..., OBJECT]
        l1 = (boxes.float() - targets[:, None].float()).abs().sum(-1)
        b, q = boxes.shape[:2]
        pred_xyxy = box_convert(boxes.float().reshape(-1, 4), "cxcywh", "xyxy")
        target_xyxy = box_convert(targets.float(), "cxcywh", "xyxy").repeat_interleave(q, dim=0)
        giou_loss = generalized_box_iou_loss(pred_xyxy, target_xyxy, reduction="none").reshape(b, q)
        cost = -config.ce * prob + config.l1 * l1 + config.giou * giou_loss
        return cost.argmin(dim=1)


def point_cells(points: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(M,) index of the row-major grid cell holding each point; points (M, 2) normalised (x, y)."""
    h, w = grid
    column = (points[:, 0].clamp(0, 1 - 1e-6) * w).long()
    row = (points[:, 1].clamp(0, 1 - 1e-6) * h).long()
    return row * w + column


def centre_cells(targets: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B,) index of the row-major grid cell holding each target's centre; targets (B, 4)
    normalised cxcywh."""
    return point_cells(targets[:, :2], grid)


def reference_loss(
    ref_logits: torch.Tensor, grid: tuple[int, int], targets: torch.Tensor, content_logits: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy of the token branch's attention logits (B, h*w) against the token whose
    cell holds the target box's centre (targets (B, 4) normalised cxcywh).

    With a landmark relation, ``content_logits`` (B, h*w) are the object token's own attention
    logits and ``ref_logits`` hold float32's lowest outside the cells the relation chose among
    (:func:`~simvg.models.heads.landmark_relation.relate_plausible`): the loss is the content
    logits' cross-entropy, plus that of ``ref_logits`` over the samples whose target cell is
    among them, weighted by their share of the batch."""
    cells = centre_cells(targets, grid)
    if content_logits is None:
        return F.cross_entropy(ref_logits.float(), cells)
    loss = F.cross_entropy(content_logits.float(), cells)
    final = ref_logits.float()
    # Left-out cells hold float32's lowest (a ONE ensemble: a gated share of it); real logits
    # never come near -1e9.
    reachable = final.gather(1, cells[:, None])[:, 0] > -1e9
    if reachable.any():
        loss = loss + F.cross_entropy(final[reachable], cells[reachable]) * reachable.float().mean()
    return loss


def positive_cells(targets: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w) bool: the cells whose box regression is trained for each target: the cell
    holding its centre and every cell whose centre lies inside the box (so that a peak one
    cell off still answers with the object's box)."""
    centres = grid_centres(grid, targets.device)  # (N, 2)
    low, high = targets[:, None, :2] - targets[:, None, 2:] / 2, targets[:, None, :2] + targets[:, None, 2:] / 2
    inside = ((centres[None] >= low) & (centres[None] <= high)).all(dim=-1)
    inside[torch.arange(len(targets), device=targets.device), centre_cells(targets, grid)] = True
    return inside


def cell_box_losses(
    cell_boxes: torch.Tensor, targets: torch.Tensor, positives: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean L1 and 1 - GIoU of the token branch's per-cell boxes against their targets,
    over the positive cells: each sample's positives share its weight equally.

    cell_boxes: (B, N, 4) normalised cxcywh; targets: (B, 4), or (B, N, 4) one per cell;
    positives: (B, N) bool (see :func:`positive_cells`); weights: optional (B,) per sample.
    """
    rows, cells = positives.nonzero(as_tuple=True)
    per_cell = (1.0 / positives.sum(dim=1).clamp_min(1).float())[rows]
    if weights is not None:
        per_cell = per_cell * weights.detach().float()[rows]
    goal = targets[rows, cells] if targets.dim() == 3 else targets[rows]
    return box_losses(cell_boxes[rows, cells], goal, per_cell)


class GroundingCriterion(nn.Module):
    def __init__(self, config: LossConfig):
        super().__init__()
        self.config = config
        self.register_buffer("class_weight", torch.tensor([1.0, config.no_object_weight]))

    @property
    def weight_dict(self) -> dict[str, float]:
        c = self.config
        weights = {"loss_tok_ce": c.lambda_token * c.ce, "loss_tok_l1": c.lambda_token * c.l1,
                   "loss_tok_giou": c.lambda_token * c.giou, "loss_tok_ref": c.token_ref}  # fmt: skip
        if c.dwbd:
            weights |= {"loss_tok_kd_ce": c.lambda_kd * c.ce, "loss_tok_kd_l1": c.lambda_kd * c.l1,
                        "loss_tok_kd_giou": c.lambda_kd * c.giou}  # fmt: skip
        return weights

    def decoder_weight_dict(self, num_layers: int) -> dict[str, float]:
        c = self.config
        weights = {}
        for suffix in [""] + ([f"_{i}" for i in range(num_layers - 1)] if c.aux else []):
            weights |= {f"loss_dec_ce{suffix}": c.ce, f"loss_dec_l1{suffix}": c.l1, f"loss_dec_giou{suffix}": c.giou}
        return weights

    def _decoder_losses(self, out: dict, targets: torch.Tensor, suffix: str) -> tuple[dict, torch.Tensor]:
        logits, boxes = out["logits"].float(), out["boxes"].float()
        matched = match_queries(logits, boxes, targets, self.config)
        rows = torch.arange(len(targets), device=targets.device)
        labels = torch.full(logits.shape[:2], NO_OBJECT, dtype=torch.long, device=targets.device)
        labels[rows, matched] = OBJECT
        ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), weight=self.class_weight)
        l1, giou = box_losses(boxes[rows, matched], targets)
        losses = {f"loss_dec_ce{suffix}": ce, f"loss_dec_l1{suffix}": l1, f"loss_dec_giou{suffix}": giou}
        return losses, matched

    def forward(self, outputs: dict, targets: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """outputs: the model's dict; targets: (B, 4) normalised cxcywh.

        Returns (losses, stats): named unweighted losses (see ``weight_dict`` and
        ``decoder_weight_dict``) and scalar statistics such as the DWBD weight.
        """
        losses: dict[str, torch.Tensor] = {}
        stats: dict[str, float] = {}
        token = outputs["token"]
        object_labels = torch.full((len(targets),), OBJECT, dtype=torch.long, device=targets.device)
        token_ce = F.cross_entropy(token["logits"].float(), object_labels)
        positives = positive_cells(targets, outputs["grid"])
        token_l1, token_giou = cell_box_losses(token["cell_boxes"], targets, positives)
        balance = 0.0
        decoder = outputs.get("decoder")
        if decoder is not None:
            decoder_losses, matched = self._decoder_losses(decoder, targets, "")
            losses |= decoder_losses
            if self.config.aux:
                for i, aux in enumerate(decoder["aux"]):
                    losses |= self._decoder_losses(aux, targets, f"_{i}")[0]
            rows = torch.arange(len(targets), device=targets.device)
            teacher_boxes = decoder["boxes"][rows, matched].detach().float()
            if self.config.dwbd:
                with torch.no_grad():
                    fg = decoder["logits"][rows, matched].float().softmax(-1)[:, OBJECT]
                    balance_tensor = (fg * paired_iou(teacher_boxes, targets)).mean()
                balance = float(balance_tensor)
                kd_l1, kd_giou = cell_box_losses(token["cell_boxes"], teacher_boxes, positives)
                losses |= {
                    "loss_tok_kd_ce": token_ce * balance_tensor,
                    "loss_tok_kd_l1": kd_l1 * balance_tensor,
                    "loss_tok_kd_giou": kd_giou * balance_tensor,
                }
                stats["dwbd_weight"] = balance
        if self.config.token_ref > 0:
            losses["loss_tok_ref"] = reference_loss(token["ref_logits"], outputs["grid"], targets, token.get("content_logits"))
        scale = 1.0 - balance if (self.config.dwbd and decoder is not None) else 1.0
        losses |= {"loss_tok_ce": token_ce * scale, "loss_tok_l1": token_l1 * scale, "loss_tok_giou": token_giou * scale}
        return losses, stats

    def total(self, losses: dict[str, torch.Tensor], decoder_layers: int) -> torch.Tensor:
        weights = self.weight_dict | self.decoder_weight_dict(decoder_layers)
        return sum(losses[k] * weights[k] for k in losses if k in weights)
