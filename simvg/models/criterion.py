"""The "cells" head's training loss: DETR-style losses per branch and dynamic weight-balance
distillation (the "simvg" head's is simvg_criterion.py; :func:`build_criterion` picks).

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
from simvg.config import LossConfig, ModelConfig
from simvg.models.heads.grid import grid_centres
from simvg.models.matcher import NO_OBJECT, OBJECT, hungarian_match
from simvg.models.set_loss import class_loss, matched_pairs, paired_iou, score_goal, set_losses
from simvg.models.simvg_criterion import SimVGCriterion, TargetSets, as_target_sets


def box_losses(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean L1 (summed over the 4 coordinates) and mean 1 - GIoU; boxes (B, 4) normalised cxcywh."""
    parts = box_distillation_loss(pred.float(), target.float(), weights, l1_weight=1.0, giou_weight=1.0)
    return parts["loss_box_kd_l1"], parts["loss_box_kd_giou"]


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


def reference_set_loss(
    ref_logits: torch.Tensor, grid: tuple[int, int], target_sets: list[torch.Tensor],
    content_logits: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """:func:`reference_loss` for target sets (B tensors (T_i, 4) normalised cxcywh, T_i >= 1):
    the attention's cross-entropy against an even share of each target's centre cell, so that
    a phrase naming several objects points at all of them. With one target per phrase it is
    :func:`reference_loss`."""
    device = ref_logits.device
    rows = torch.cat([torch.full((len(t),), i, dtype=torch.long) for i, t in enumerate(target_sets)]).to(device)
    share = torch.cat([torch.full((len(t),), 1.0 / len(t)) for t in target_sets]).to(device)
    cells = centre_cells(torch.cat([t.float() for t in target_sets]).to(device), grid)
    if content_logits is None:
        return (F.cross_entropy(ref_logits[rows].float(), cells, reduction="none") * share).sum() / len(target_sets)
    loss = (F.cross_entropy(content_logits[rows].float(), cells, reduction="none") * share).sum() / len(target_sets)
    final = ref_logits[rows].float()
    reachable = final.gather(1, cells[:, None])[:, 0] > -1e9  # see reference_loss
    if reachable.any():
        per_pair = F.cross_entropy(final[reachable], cells[reachable], reduction="none") * share[reachable]
        loss = loss + per_pair.sum() / len(target_sets)
    return loss


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


def set_positive_cells(
    target_sets: list[torch.Tensor], grid: tuple[int, int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`positive_cells` of target sets: the samples with a target (M,), each cell's target
    (M, h*w, 4) (where a cell lies on several, the one whose centre is nearest the cell's) and
    the positive cells (M, h*w) bool (those on any target)."""
    rows, goals, positives = [], [], []
    centres = grid_centres(grid, device)
    for i, targets in enumerate(target_sets):
        if len(targets) == 0:
            continue
        targets = targets.to(device).float()
        on = positive_cells(targets, grid)  # (T, N)
        distance = torch.cdist(targets[:, :2], centres).masked_fill(~on, float("inf"))
        rows.append(i)
        goals.append(targets[distance.argmin(dim=0)])
        positives.append(on.any(dim=0))
    if not rows:
        cells = grid[0] * grid[1]
        return (torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, cells, 4, device=device),
                torch.zeros(0, cells, dtype=torch.bool, device=device))  # fmt: skip
    return torch.tensor(rows, dtype=torch.long, device=device), torch.stack(goals), torch.stack(positives)


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
    """forward(outputs, targets) -> (losses, stats) for the "cells" head.

    targets: (B, 4) normalised cxcywh, one per sample, or B tensors (T_i, 4): T_i = 0 (no
    target: the answer's score learns "no object", its box nothing) or several (the token
    branch's single answer learns the one nearest to it in DETR's matching cost; the decoder
    branch's queries are matched to all of them). The answer's score learns "object", or its
    box's IoU with the target (``loss.score_target`` "iou", the default for this head).
    """

    def __init__(self, config: LossConfig):
        super().__init__()
        self.config = config
        self.score_target = config.score_target or "iou"
        self.costs = (config.ce, config.l1, config.giou)
        self.register_buffer("class_weight", torch.tensor([1.0, config.no_object_weight]))

    @property
    def weight_dict(self) -> dict[str, float]:
        c = self.config
        weights = {"loss_tok_ce": c.lambda_token * c.ce, "loss_tok_l1": c.lambda_token * c.l1,
                   "loss_tok_giou": c.lambda_token * c.giou, "loss_tok_ref": c.token_ref,
                   "loss_tok_presence": c.presence}  # fmt: skip
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
        object_target = torch.zeros(logits.shape[:2], device=targets.device)
        weights = self.class_weight[NO_OBJECT].expand(logits.shape[:2]).clone()
        object_target[rows, matched] = score_goal(boxes[rows, matched].detach(), targets, self.score_target)
        weights[rows, matched] = 1.0
        ce = class_loss(logits, object_target, weights)
        l1, giou = box_losses(boxes[rows, matched], targets)
        losses = {f"loss_dec_ce{suffix}": ce, f"loss_dec_l1{suffix}": l1, f"loss_dec_giou{suffix}": giou}
        return losses, matched

    def _decoder_set_losses(self, out: dict, target_sets: TargetSets, suffix: str) -> tuple[dict, list]:
        logits, boxes = out["logits"].float(), out["boxes"].float()
        matches = hungarian_match(logits, boxes, target_sets, self.costs)
        ce, l1, giou = set_losses(logits, boxes, target_sets, matches, self.config.no_object_weight, self.score_target)
        return {f"loss_dec_ce{suffix}": ce, f"loss_dec_l1{suffix}": l1, f"loss_dec_giou{suffix}": giou}, matches

    def _answer_targets(self, token: dict, target_sets: TargetSets) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples that have a target (M,) and the index, in each one's set, of the target
        its single answer learns (M,): the one DETR's matching cost puts nearest."""
        matches = hungarian_match(token["logits"][:, None], token["boxes"][:, None], target_sets, self.costs)
        rows = [i for i, (_, goal) in enumerate(matches) if len(goal)]
        device = token["logits"].device
        chosen = [int(matches[i][1][0]) for i in rows]
        return torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(chosen, dtype=torch.long, device=device)

    def _token_class_loss(self, token: dict, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The answer's score: "object" (or, with "iou", its box's IoU with the target) for the
        samples ``rows`` with a target (``targets`` (M, 4)), "no object" for the others."""
        logits = token["logits"]
        object_target = torch.zeros(len(logits), device=logits.device)
        object_target[rows] = score_goal(token["boxes"][rows].detach(), targets, self.score_target)
        return class_loss(logits, object_target, torch.ones_like(object_target))

    def forward(self, outputs: dict, targets: torch.Tensor | TargetSets) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """outputs: the model's dict; targets: see the class docstring.

        Returns (losses, stats): named unweighted losses (see ``weight_dict`` and
        ``decoder_weight_dict``) and scalar statistics such as the DWBD weight.
        """
        if outputs["token"]["logits"].dim() == 3:  # every cell answers (cell scores)
            return self._every_cell_answers(outputs, as_target_sets(targets))
        sets = None if isinstance(targets, torch.Tensor) else as_target_sets(targets)
        if sets is not None and all(len(t) == 1 for t in sets):
            targets, sets = torch.stack([t[0] for t in sets]), None
        losses: dict[str, torch.Tensor] = {}
        stats: dict[str, float] = {}
        token = outputs["token"]
        device = token["logits"].device
        if sets is None:
            rows, chosen = torch.arange(len(targets), device=device), None
        else:
            rows, chosen = self._answer_targets(token, sets)
            targets = torch.stack([sets[r][j] for r, j in zip(rows.tolist(), chosen.tolist())]) if len(rows) else None
            targets = targets.to(device).float() if targets is not None else torch.zeros(0, 4, device=device)
        token_ce = self._token_class_loss(token, rows, targets)
        positives = positive_cells(targets, outputs["grid"])
        token_l1, token_giou = cell_box_losses(token["cell_boxes"][rows], targets, positives)
        balance = 0.0
        decoder = outputs.get("decoder")
        if decoder is not None:
            if sets is None:
                decoder_losses, matched = self._decoder_losses(decoder, targets, "")
                if self.config.aux:
                    for i, aux in enumerate(decoder["aux"]):
                        losses |= self._decoder_losses(aux, targets, f"_{i}")[0]
                teacher_rows = rows
                pair_rows, pair_preds, pair_goals = rows, matched, targets
            else:
                decoder_losses, matches = self._decoder_set_losses(decoder, sets, "")
                if self.config.aux:
                    for i, aux in enumerate(decoder["aux"]):
                        losses |= self._decoder_set_losses(aux, sets, f"_{i}")[0]
                pair_rows, pair_preds, _, pair_goals = matched_pairs(decoder["boxes"], sets, matches)
                # The decoder's query matched to the target each answer learns (none if unmatched).
                teacher_rows, matched = [], []
                for k, (r, j) in enumerate(zip(rows.tolist(), chosen.tolist())):
                    found = matches[r][0][matches[r][1] == j]
                    if len(found):
                        teacher_rows.append(k)
                        matched.append(int(found[0]))
                teacher_rows = torch.tensor(teacher_rows, dtype=torch.long, device=device)
                matched = torch.tensor(matched, dtype=torch.long, device=device)
            losses |= decoder_losses
            if self.config.dwbd:
                with torch.no_grad():
                    fg = decoder["logits"][pair_rows, pair_preds].float().softmax(-1)[:, OBJECT]
                    pairs = fg * paired_iou(decoder["boxes"][pair_rows, pair_preds].float(), pair_goals)
                    balance_tensor = pairs.mean() if len(pairs) else pairs.new_zeros(())
                balance = float(balance_tensor)
                teacher_boxes = decoder["boxes"][rows[teacher_rows], matched].detach().float()
                kd_l1, kd_giou = cell_box_losses(token["cell_boxes"][rows[teacher_rows]], teacher_boxes, positives[teacher_rows])
                losses |= {
                    "loss_tok_kd_ce": token_ce * balance_tensor,
                    "loss_tok_kd_l1": kd_l1 * balance_tensor,
                    "loss_tok_kd_giou": kd_giou * balance_tensor,
                }
                stats["dwbd_weight"] = balance
        if self.config.token_ref > 0:
            content = token.get("content_logits")
            losses["loss_tok_ref"] = (
                reference_loss(token["ref_logits"][rows], outputs["grid"], targets, None if content is None else content[rows])
                if len(rows) else token["ref_logits"].float().sum() * 0.0
            )
        scale = 1.0 - balance if (self.config.dwbd and decoder is not None) else 1.0
        losses |= {"loss_tok_ce": token_ce * scale, "loss_tok_l1": token_l1 * scale, "loss_tok_giou": token_giou * scale}
        return losses, stats

    def _cell_set_losses(self, token: dict, target_sets: TargetSets, grid: tuple[int, int]) -> tuple:
        """A token branch whose every cell answers: (class loss, L1, 1 - GIoU). The cells'
        scores learn "object" (or what ``score_target`` makes of the box) on one cell per
        target: the cell holding its centre (``loss.cell_assignment`` "centre", every other
        cell "no object", see :meth:`_assigned_cell_class_loss`) or the cell Hungarian matching
        gives it ("match", the others "no object" weighted no_object_weight). The boxes, as with
        one target, on every cell that lies on a target (the target whose centre is nearest,
        where targets overlap), each sample's cells sharing its weight."""
        logits, cell_boxes = token.get("cell_logits", token["logits"]), token["cell_boxes"]
        rows, cell_goals, positives = set_positive_cells(target_sets, grid, logits.device)
        l1, giou = cell_box_losses(cell_boxes[rows], cell_goals, positives)
        if self.config.cell_assignment == "centre":
            images = torch.cat([torch.full((len(t),), i, dtype=torch.long) for i, t in enumerate(target_sets)])
            goals = torch.cat([t.float() for t in target_sets]).to(logits.device) if len(images) else cell_boxes.new_zeros(0, 4)
            images, cells = images.to(logits.device), centre_cells(goals, grid)
            return self._assigned_cell_class_loss(logits, cell_boxes, images, cells, goals), l1, giou
        matches = hungarian_match(logits, cell_boxes, target_sets, self.costs)
        images, cells, predicted, goals = matched_pairs(cell_boxes, target_sets, matches)
        object_target = torch.zeros(logits.shape[:2], device=logits.device)
        weights = self.class_weight[NO_OBJECT].expand(logits.shape[:2]).clone()
        object_target[images, cells] = score_goal(predicted.detach(), goals, self.score_target)
        weights[images, cells] = 1.0
        return class_loss(logits, object_target, weights), l1, giou

    def _assigned_cell_class_loss(
        self, logits: torch.Tensor, cell_boxes: torch.Tensor, images: torch.Tensor, cells: torch.Tensor,
        goals: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """The cells' class loss where the cells that answer each target are fixed (not
        matched): cell ``cells`` (M,) of sample ``images`` (M,) answers target ``goals`` (M, 4)
        and learns "object" (or what ``score_target`` makes of its box); every other cell, and
        every cell of a phrase without target, learns "no object", all weighted alike so that
        a score is the share of such cells that are right; with ``loss.cell_ignore_iou`` > 0 a
        cell whose box overlaps one of its phrase's targets at that IoU or more learns nothing
        unless it answers one; with ``loss.cells_given_presence`` the cells of a phrase without
        target learn nothing (presence alone learns it names nothing). Summed over the cells and
        divided by the number of answering cells (at least the batch size), as RetinaNet's."""
        object_target = torch.zeros(logits.shape[:2], device=logits.device)
        object_target[images, cells] = score_goal(cell_boxes[images, cells].detach(), goals, self.score_target)
        weights = torch.ones_like(object_target)
        threshold = self.config.cell_ignore_iou
        if threshold > 0 and len(images):
            with torch.no_grad():
                xyxy = box_convert(cell_boxes.detach().float(), "cxcywh", "xyxy")
                goals_xyxy = box_convert(goals.float(), "cxcywh", "xyxy")
                for i in images.unique().tolist():
                    overlap = box_iou(xyxy[i], goals_xyxy[images == i])  # (N, targets of phrase i)
                    weights[i, overlap.amax(dim=1) >= threshold] = 0.0
            weights[images, cells] = 1.0
        if self.config.cells_given_presence:
            named = torch.zeros(len(logits), dtype=torch.bool, device=logits.device)
            named[images] = True
            weights[~named] = 0.0
        return class_loss(logits, object_target, weights) * weights.sum() / max(len(images), len(logits))

    def _every_cell_answers(self, outputs: dict, target_sets: TargetSets) -> tuple[dict, dict]:
        """forward() for a token branch whose every cell answers (a "cells" head with several
        queries): the cells' set loss, the pointing loss on the samples with one target, the
        decoder's set loss, DWBD with the decoder's matched boxes as the cells' targets, and the
        phrase's presence (does it name any object?) where the branch gives it."""
        token, grid, device = outputs["token"], outputs["grid"], outputs["token"]["logits"].device
        losses: dict[str, torch.Tensor] = {}
        stats: dict[str, float] = {}
        ce, l1, giou = self._cell_set_losses(token, target_sets, grid)
        balance = None
        decoder = outputs.get("decoder")
        if decoder is not None:
            decoder_losses, matches = self._decoder_set_losses(decoder, target_sets, "")
            losses |= decoder_losses
            if self.config.aux:
                for i, aux in enumerate(decoder["aux"]):
                    losses |= self._decoder_set_losses(aux, target_sets, f"_{i}")[0]
            if self.config.dwbd:
                with torch.no_grad():
                    images, queries, teacher_boxes, goals = matched_pairs(decoder["boxes"].detach(), target_sets, matches)
                    fg = decoder["logits"][images, queries].float().softmax(-1)[:, OBJECT]
                    pairs = fg * paired_iou(teacher_boxes, goals)
                    balance = pairs.mean() if len(pairs) else pairs.new_zeros(())
                teacher_sets = [teacher_boxes[images == i] for i in range(len(target_sets))]
                kd = self._cell_set_losses(token, teacher_sets, grid)
                losses |= {f"loss_tok_kd_{k}": v * balance for k, v in zip(("ce", "l1", "giou"), kd)}
                stats["dwbd_weight"] = float(balance)
        if self.config.token_ref > 0:
            named = torch.tensor([i for i, t in enumerate(target_sets) if len(t)], dtype=torch.long, device=device)
            if len(named):
                content = token.get("content_logits")
                losses["loss_tok_ref"] = reference_set_loss(token["ref_logits"][named], grid,
                                                            [target_sets[i] for i in named.tolist()],
                                                            None if content is None else content[named])  # fmt: skip
            else:
                losses["loss_tok_ref"] = token["ref_logits"].float().sum() * 0.0
        presence = token.get("presence_logits")
        if presence is not None:
            present = torch.tensor([len(t) > 0 for t in target_sets], dtype=torch.float32, device=device)
            losses["loss_tok_presence"] = F.binary_cross_entropy_with_logits(presence.float(), present)
        scale = 1.0 if balance is None else 1.0 - balance
        return losses | {"loss_tok_ce": ce * scale, "loss_tok_l1": l1 * scale, "loss_tok_giou": giou * scale}, stats

    def total(self, losses: dict[str, torch.Tensor], decoder_layers: int) -> torch.Tensor:
        weights = self.weight_dict | self.decoder_weight_dict(decoder_layers)
        return sum(losses[k] * weights[k] for k in losses if k in weights)


def build_criterion(model: ModelConfig, loss: LossConfig) -> nn.Module:
    """The training loss of the model's head type: :class:`GroundingCriterion` ("cells") or
    :class:`~simvg.models.simvg_criterion.SimVGCriterion` ("simvg"); each builds its own loss
    weights. Both are called as ``criterion(outputs, targets)`` and ``criterion.total(losses,
    decoder_layers)``."""
    if model.head.type == "simvg":
        return SimVGCriterion(loss, model.head.decoder_layers)
    return GroundingCriterion(loss)
