"""SimVG's training loss for the "simvg" head, as its official code computes it.

Each branch gets DETR's set loss (Hungarian matching with costs (ce, l1, giou) = (1, 5, 2);
cross-entropy with no-object weight 0.1, L1 x5, GIoU x2), the decoder branch on every layer
(auxiliary losses), and dynamic weight-balance distillation (DWBD) lets the decoder branch
teach the token branch: w = the mean, over the decoder's matched pairs, of foreground
probability x IoU with the target; total = L_dec + lambda_token (1 - w) L_tok(targets) +
lambda_kd w L_tok(the decoder's matched boxes).
"""

from __future__ import annotations

import torch
from torch import nn

from simvg.config import LossConfig
from simvg.models.matcher import OBJECT, hungarian_match
from simvg.models.set_loss import matched_pairs, paired_iou, set_losses

TargetSets = list[torch.Tensor]


def as_target_sets(targets: torch.Tensor | TargetSets) -> TargetSets:
    """(B, 4) one target per sample, or B tensors (T_i, 4) -> B tensors (T_i, 4)."""
    return [t[None] for t in targets] if isinstance(targets, torch.Tensor) else list(targets)


def as_queries(branch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A branch's (logits (B, Q, 2), boxes (B, Q, 4)); a single-query branch's (B, 2) and
    (B, 4) gain the query dimension."""
    logits, boxes = branch["logits"], branch["boxes"]
    return (logits[:, None], boxes[:, None]) if logits.dim() == 2 else (logits, boxes)


class SimVGCriterion(nn.Module):
    """forward(outputs, targets) -> (losses, stats) for the "simvg" head.

    targets: (B, 4) normalised cxcywh, or B tensors (T_i, 4), T_i possibly 0 (no target).
    Losses, named as DETR's and weighted by :attr:`weight_dict` (built here, the one place):
      loss_dec_{ce,l1,giou} and loss_dec_{ce,l1,giou}_{i} for each earlier decoder layer
        (with ``aux``): ce, l1, giou;
      loss_tok_{ce,l1,giou}: lambda_token x (ce, l1, giou); they arrive multiplied by (1 - w)
        when DWBD runs;
      loss_tok_kd_{ce,l1,giou}: lambda_kd x (ce, l1, giou); they arrive multiplied by w.
    stats: {"dwbd_weight": w} when DWBD runs.
    """

    def __init__(self, config: LossConfig, decoder_layers: int):
        super().__init__()
        self.config = config
        self.costs = (config.ce, config.l1, config.giou)
        self.score_target = config.score_target or "label"
        c = config
        parts = {"ce": c.ce, "l1": c.l1, "giou": c.giou}
        weights = {f"loss_tok_{k}": c.lambda_token * v for k, v in parts.items()}
        if c.dwbd:
            weights |= {f"loss_tok_kd_{k}": c.lambda_kd * v for k, v in parts.items()}
        suffixes = [""] + ([f"_{i}" for i in range(decoder_layers - 1)] if c.aux else [])
        weights |= {f"loss_dec_{k}{suffix}": v for suffix in suffixes for k, v in parts.items()}
        self.weight_dict = weights

    def _branch_losses(
        self, logits: torch.Tensor, boxes: torch.Tensor, target_sets: TargetSets, prefix: str
    ):
        matches = hungarian_match(logits, boxes, target_sets, self.costs)
        ce, l1, giou = set_losses(
            logits, boxes, target_sets, matches, self.config.no_object_weight, self.score_target
        )
        return {f"{prefix}_ce": ce, f"{prefix}_l1": l1, f"{prefix}_giou": giou}, matches

    def forward(
        self, outputs: dict, targets: torch.Tensor | TargetSets
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        target_sets = as_target_sets(targets)
        losses: dict[str, torch.Tensor] = {}
        stats: dict[str, float] = {}
        token_logits, token_boxes = as_queries(outputs["token"])
        token_losses = self._branch_losses(token_logits, token_boxes, target_sets, "loss_tok")[0]
        decoder = outputs.get("decoder")
        if decoder is None:
            return losses | token_losses, stats
        logits, boxes = decoder["logits"], decoder["boxes"]
        decoder_losses, matches = self._branch_losses(logits, boxes, target_sets, "loss_dec")
        losses |= decoder_losses
        if self.config.aux:
            for i, aux in enumerate(decoder["aux"]):
                aux_losses = self._branch_losses(
                    aux["logits"], aux["boxes"], target_sets, "loss_dec"
                )[0]
                losses |= {f"{k}_{i}": v for k, v in aux_losses.items()}
        if not self.config.dwbd:
            return losses | token_losses, stats
        with torch.no_grad():
            images, preds, teacher_boxes, goals = matched_pairs(
                boxes.detach(), target_sets, matches
            )
            fg = logits[images, preds].float().softmax(-1)[:, OBJECT]
            pairs = fg * paired_iou(teacher_boxes, goals)
            balance = pairs.mean() if len(pairs) else pairs.new_zeros(())
            teacher_sets = [teacher_boxes[images == i] for i in range(len(target_sets))]
        kd = self._branch_losses(token_logits, token_boxes, teacher_sets, "loss_tok_kd")[0]
        losses |= {k: v * (1 - balance) for k, v in token_losses.items()} | {
            k: v * balance for k, v in kd.items()
        }
        stats["dwbd_weight"] = float(balance)
        return losses, stats

    def total(
        self, losses: dict[str, torch.Tensor], decoder_layers: int | None = None
    ) -> torch.Tensor:
        """The weighted sum of ``losses``; ``decoder_layers`` is not used (the weights were
        built with the criterion) and is accepted so that both criteria are called alike."""
        return sum(losses[k] * self.weight_dict[k] for k in losses if k in self.weight_dict)
