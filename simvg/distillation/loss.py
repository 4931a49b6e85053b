"""The student's training objective (``distill.objective``).

"full", the recipe: ground truth; ONE on the token branch's distribution over cells (its
reference attention: the gated ensemble's teaches each branch); KD from the teacher's
distribution over cells; box KD with DWBD-style confidence; attention transfer on the stem;
object-token feature mimicking; and, as for a teacher, auxiliary supervision of its visual
tokens.

"teacher", TAKFL's per-teacher objective as published: KD from the teacher's distribution over
cells plus self-regularisation towards the student's own start predictions
(:func:`distill.takfl.self_regularised_kd_loss`), and box KD. Nothing in it reads the ground
truth, so it also trains on unlabelled images.

A student with several answers (every cell answers with its own score, as its teacher's do)
trains on phrases with any number of targets (``batch.target_sets``): the ground truth through
the criterion's set losses (each target's centre cell answers it), KD of the teacher's
per-cell object probabilities, of its distribution over cells on the phrases with one target
(or, without ground truth, the phrases the teacher answers with one cell), and box KD towards
each answer the teacher gives.

The teachers and the start model are frozen and kept out of this module's parameters and
state dict.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import box_convert, box_iou

from distill.hooks import FeatureRecorder
from distill.losses import (
    FeatureMimic,
    attention_transfer_loss,
    joint_kd_loss,
    kd_loss,
    mean_distribution_logits,
)
from distill.one import one_kd_loss, sigmoid_rampup
from distill.takfl import self_regularised_kd_loss
from simvg.config import Config
from simvg.data.dataset import Batch
from simvg.models import SimVG
from simvg.models.auxiliary import AuxiliaryLosses
from simvg.models.criterion import (
    GroundingCriterion,
    box_losses,
    cell_box_losses,
    paired_iou,
    positive_cells,
    set_positive_cells,
)
from simvg.models.heads.grid import grid_centres
from simvg.models.heads.token_branch import MultiBranchTokenHead
from simvg.models.postprocess import select_boxes
from simvg.models.simvg_criterion import as_queries, as_target_sets

OBJECTIVES = ("full", "teacher")


def stem_stage_names(model: SimVG, stages: list[int]) -> list[str]:
    stem = getattr(model.encoder, "stem", None)
    if stem is None:
        return []
    return [f"encoder.stem.stages.{i}" for i in stages if i < len(stem.stages)]


def token_heads(token: dict) -> list[dict]:
    """The token-branch outputs a student trains: each ONE branch and the gated ensemble, or
    the one branch."""
    return [*token["branches"], token] if token.get("gate") is not None else [token]


def cell_logits(head: dict, whose: str) -> torch.Tensor:
    """(B, N) float32 attention logits of a token branch over the grid's cells (masked cells at
    float32's lowest): the distribution over cells that cell KD and ONE distil."""
    if "ref_logits" not in head:
        raise ValueError(f"{whose} token branch gives no distribution over cells (ref_logits): cell KD, ONE and "
                         f"TAKFL distil the 'cells' token branch's; set distill.cell_kd=0 and distill.one=0")  # fmt: skip
    return head["ref_logits"].float()


# Left-out cells hold float32's lowest (or -inf in teachers' averaged distributions); real
# logits never come near this.
LEFT_OUT = -1e9


def cell_distribution(head: dict, whose: str) -> torch.Tensor:
    """The distribution over cells that cell KD and TAKFL distil: a token branch's (B, N)
    attention logits, or, where a landmark relation chooses among the plausible cells, (B, 2, N):
    the object token's own attention logits (which pick those cells) stacked on the final
    ones (float32's lowest on the cells left out); see :func:`cell_kd_loss`."""
    final = cell_logits(head, whose)
    content = head.get("content_logits")
    return final if content is None else torch.stack([content.float(), final], dim=1)


def cell_kd_loss(student: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL of a student's distribution over cells to a teacher's (as :func:`cell_distribution`
    gives them; detached target); plain :func:`~distill.losses.kd_loss` for (B, N) logits.

    With a landmark relation (B, 2, N) the KL is taken in two stages, as the ground truth's
    reference loss is (:func:`~simvg.models.criterion.reference_loss`): that of the object
    token's own attention for every sample, plus that of the final distributions over the
    samples where the student keeps every cell the teacher keeps, weighted by their share of
    the batch. A cell the teacher keeps and the student leaves out has no gradient, and its
    KL can only shrink by spreading the student's other logits apart: from a 94.98% teacher the
    single KL did so until the reference-cell loss rose from 7 to about 5000 (val 33.8%;
    docs/distillation.md).
    A student or teacher without the relation compares final distributions."""
    if student.dim() != target.dim():
        student, target = (t[:, -1] if t.dim() == 3 else t for t in (student, target))
    if student.dim() == 2:
        return kd_loss(student, target, temperature)
    content, final = student.unbind(1)
    target_content, target_final = target.detach().unbind(1)
    loss = kd_loss(content, target_content, temperature)
    kept = ((target_final <= LEFT_OUT) | (final > LEFT_OUT)).all(dim=-1)
    if kept.any():
        loss = loss + kd_loss(final[kept], target_final[kept], temperature) * kept.float().mean()
    return loss


def cell_scores(head: dict, whose: str) -> torch.Tensor:
    """(B, N, 2) float32 2-way logits of every cell of a token branch whose every cell answers
    (class 0 = object; padding cells score "no object")."""
    if head["logits"].dim() != 3:
        raise ValueError(f"{whose} token branch gives one answer per phrase, not a score per cell: distill.score_kd "
                         f"distils the per-cell scores of a teacher with several answers; set distill.score_kd=0")  # fmt: skip
    return head["logits"].float()


def answers_several(head: dict) -> bool:
    """Whether a token branch's output answers with every cell (2-way logits (B, N, 2))."""
    return head["logits"].dim() == 3


def best_target_iou(boxes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(A,) each box's highest IoU with any of ``targets`` (0 where there is none); boxes (A, 4),
    targets (T, 4) normalised cxcywh."""
    if len(boxes) == 0 or len(targets) == 0:
        return boxes.new_zeros(len(boxes))
    xyxy = box_convert(boxes.float(), "cxcywh", "xyxy"), box_convert(targets.float().to(boxes.device), "cxcywh", "xyxy")
    return box_iou(*xyxy).amax(dim=1)


def answer_cells(
    answers: list[torch.Tensor], weights: list[torch.Tensor] | None, grid: tuple[int, int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which cells regress which answer box: every cell that lies on an answer of its sample
    (its centre cell, and every cell whose centre is inside it; where answers overlap, the one
    whose centre is nearest), as the ground truth's set boxes train them.

    answers: B tensors (A_i, 4) normalised cxcywh, A_i may be 0; weights: B tensors (A_i,),
    one per answer (None: 1). Returns (samples (K,), cells (K,), goals (K, 4), per-cell weights
    (K,)): each sample's cells share its weight equally, scaled by their answer's weight.
    """
    samples, cells, goals, shares = [], [], [], []
    centres = grid_centres(grid, device)
    for i, boxes in enumerate(answers):
        if len(boxes) == 0:
            continue
        boxes = boxes.to(device).float()
        on = positive_cells(boxes, grid)  # (A, N)
        nearest = torch.cdist(boxes[:, :2], centres).masked_fill(~on, float("inf")).argmin(dim=0)  # (N,)
        chosen = on.any(dim=0).nonzero()[:, 0]
        answer = nearest[chosen]
        share = torch.full((len(chosen),), 1.0 / len(chosen), device=device)
        if weights is not None:
            share = share * weights[i].to(device).float()[answer]
        samples.append(torch.full_like(chosen, i))
        cells.append(chosen)
        goals.append(boxes[answer])
        shares.append(share)
    if not samples:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty, torch.zeros(0, 4, device=device), torch.zeros(0, device=device)
    return torch.cat(samples), torch.cat(cells), torch.cat(goals), torch.cat(shares)


def single_target_rows(target_sets: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """(M,) the samples whose phrase has exactly one target."""
    return torch.tensor([i for i, t in enumerate(target_sets) if len(t) == 1], dtype=torch.long, device=device)


@dataclass
class TeacherTargets:
    """What the frozen teachers say about a batch, averaged over the teachers where several.

    One answer per phrase: boxes (B, 4) normalised cxcywh; confidence (B,) DWBD-style weights,
    teacher score x IoU with the ground truth (None in the "teacher" objective, which never
    reads the ground truth).

    Several answers per phrase: answers, per teacher, B tensors (A_i, 4): the boxes the teacher
    answers with (score >= ``distill.box_kd_threshold``); answer_weights, per teacher, B
    tensors (A_i,): each answer's score x its highest IoU with the phrase's targets (None
    without ground truth); scores (B, N, 2) logits whose 2-way softmax at
    ``distill.score_kd_temperature`` is the teachers' mean object probability per cell (None
    when no loss reads it); one_answer (B,) bool: the phrases the teachers answer with exactly
    one cell (mean probability >= the threshold).

    cells: (B, N) logits whose softmax at ``distill.kd_temperature`` is the teachers' mean
    distribution over cells, (B, 2, N) with a landmark relation (:func:`cell_distribution`;
    None when no loss reads it); grid: the teachers' (h, w); token:
    (B, D) the first teacher's object token; maps: its stem stage maps.
    """

    boxes: torch.Tensor | None
    cells: torch.Tensor | None
    grid: tuple[int, int]
    confidence: torch.Tensor | None
    token: torch.Tensor
    maps: list[torch.Tensor]
    answers: list[list[torch.Tensor]] | None = None
    answer_weights: list[list[torch.Tensor]] | None = None
    scores: torch.Tensor | None = None
    one_answer: torch.Tensor | None = None


class DistillationLoss(nn.Module):
    """forward(batch) -> (weighted total, logs) for a student learning from frozen teachers.

    With several teachers, their boxes are averaged and so are their distributions over cells
    (the plain multi-teacher baseline); a student with several answers regresses each
    teacher's answers. ``start_model`` (frozen; the student at its start weights) gives the
    "teacher" objective's self-regularisation target and is required by it. ``auxiliary``
    (optional, "full" only) adds word alignment / category supervision of the student's visual
    tokens, as for a teacher with a fresh stem.
    """

    def __init__(
        self,
        student: SimVG,
        teachers: list[SimVG],
        config: Config,
        start_model: SimVG | None = None,
        auxiliary: AuxiliaryLosses | None = None,
    ):
        super().__init__()
        d = config.distill
        self.objective = d.objective or "full"
        if self.objective not in OBJECTIVES:
            raise ValueError(f"distill.objective is '{d.objective}'; choose one of: {', '.join(OBJECTIVES)}")
        if self.objective == "teacher" and start_model is None:
            raise ValueError("the 'teacher' objective regularises towards the student's start predictions: "
                             "give the start model")  # fmt: skip
        self.several = student.config.head.num_queries > 1
        for i, teacher in enumerate(teachers):
            if (teacher.config.head.num_queries > 1) != self.several:
                raise ValueError(f"teacher {i} answers a phrase with {'several boxes' if not self.several else 'one box'} "
                                 f"(model.head.num_queries {teacher.config.head.num_queries}), the student with "
                                 f"{'several' if self.several else 'one'}: distil from teachers of the student's answer "
                                 f"mode (a student answers as its first teacher does)")  # fmt: skip
        self.student = student
        self.auxiliary = auxiliary if self.objective == "full" else None
        self.config = config
        # Outside the module's state dict (as the teachers): runs saved before it resume as they were.
        self._criterion = [GroundingCriterion(config.loss)]
        self._frozen = [m.eval().requires_grad_(False) for m in teachers]
        self._start = [start_model.eval().requires_grad_(False)] if start_model is not None else []
        if start_model is not None and isinstance(start_model.token_head, MultiBranchTokenHead):
            start_model.token_head.deploy_branch = None  # in eval mode too: every branch, paired with the student's
        full = self.objective == "full"
        self.mimic = None
        if full and d.feature_mimic > 0:
            self.mimic = FeatureMimic(student.config.head.hidden_dim, teachers[0].config.head.hidden_dim)
        self.at_student = stem_stage_names(student, d.attention_stages) if full and d.attention_transfer > 0 else []
        self.at_teacher = stem_stage_names(teachers[0], d.attention_stages) if self.at_student else []
        # Kept as a buffer so that a resumed run continues the ONE ramp-up exactly.
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @property
    def teachers(self) -> list[SimVG]:
        return self._frozen

    @property
    def criterion(self) -> GroundingCriterion:
        """The "cells" head's loss, for the ground truth (the student's token branch, no decoder)."""
        return self._criterion[0]

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        for model in self._frozen + self._start + self._criterion:
            model._apply(fn, recurse)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        for model in self._frozen + self._start:
            model.eval()
        return self

    @property
    def weight_dict(self) -> dict[str, float]:
        """Every loss's weight. Already inside the losses: T^2 in the KLs, the self-regularisation's
        weight in ``loss_takfl_cells`` and ``loss_takfl_scores``, DWBD's mean confidence in the box KD."""
        d, loss = self.config.distill, self.config.loss
        ramp = sigmoid_rampup(float(self.step), d.one_rampup_fraction * self.config.train.max_steps)
        return {
            "loss_gt_ce": d.gt * loss.ce, "loss_gt_l1": d.gt * loss.l1, "loss_gt_giou": d.gt * loss.giou,
            "loss_tok_ref": d.gt * loss.token_ref, "loss_gt_presence": d.gt * loss.presence,
            "loss_one_cells": d.one * ramp, "loss_one_scores": d.one * ramp,
            "loss_one_l1": d.one_box * ramp * loss.l1, "loss_one_giou": d.one_box * ramp * loss.giou,
            "loss_cell_kd": d.cell_kd, "loss_takfl_cells": d.cell_kd,
            "loss_score_kd": d.score_kd, "loss_takfl_scores": d.score_kd,
            "loss_box_kd_l1": d.box_kd * loss.l1, "loss_box_kd_giou": d.box_kd * loss.giou,
            "loss_at": d.attention_transfer, "loss_mimic": d.feature_mimic,
        } | (self.auxiliary.weight_dict if self.auxiliary is not None else {})  # fmt: skip

    def _needs_cells(self) -> bool:
        return self.config.distill.cell_kd > 0

    def _needs_scores(self) -> bool:
        return self.several and self.config.distill.score_kd > 0

    @torch.no_grad()
    def _teacher_targets(self, batch: Batch) -> TeacherTargets:
        d = self.config.distill
        confident = self.objective == "full"
        target_sets = None
        if confident and batch.targets is None:
            target_sets = self._target_sets(batch)
        boxes, cells, confidences, tokens, maps = [], [], [], [], []
        answers, answer_weights, scores = [], [], []
        for teacher in self._frozen:
            use_decoder = d.teacher_branch == "decoder"
            with FeatureRecorder(teacher, self.at_teacher) as recorder:
                out = teacher(batch.images, batch.pixel_mask, batch.input_ids, batch.text_mask, use_decoder=use_decoder)
            if self.several:
                logits, every_box = as_queries(out[d.teacher_branch])
                probs = logits.float().softmax(-1)[..., 0]
                keep = probs >= d.box_kd_threshold
                answers.append([b[k].float() for b, k in zip(every_box, keep)])
                if confident:
                    goals = target_sets if target_sets is not None else as_target_sets(batch.targets)
                    answer_weights.append([p[k] * best_target_iou(b[k], t) for p, b, k, t in
                                           zip(probs, every_box, keep, goals)])  # fmt: skip
                if self._needs_scores() or (self.objective == "teacher" and self._needs_cells()):
                    scores.append(cell_scores(out["token"], "the teacher's"))
            else:
                teacher_boxes, probs = select_boxes(out, d.teacher_branch)
                boxes.append(teacher_boxes.float())
                if confident:
                    if batch.targets is not None:
                        confidences.append(probs * paired_iou(teacher_boxes, batch.targets))
                    else:  # the answer's score x its IoU with the nearest target (0 without one)
                        ious = [best_target_iou(b[None], t)[0] for b, t in zip(teacher_boxes, target_sets)]
                        confidences.append(probs * torch.stack(ious))
            if self._needs_cells():
                cells.append(cell_distribution(out["token"], "the teacher's"))
            tokens.append(out["object_token"].float())
            maps.append([recorder.features[n] for n in self.at_teacher])
        distribution = None
        if cells:
            distribution = cells[0] if len(cells) == 1 else mean_distribution_logits(cells, d.kd_temperature)
        targets = TeacherTargets(
            boxes=torch.stack(boxes).mean(0) if boxes else None, cells=distribution, grid=tuple(out["grid"]),
            confidence=torch.stack(confidences).mean(0) if confidences else None, token=tokens[0], maps=maps[0],
        )  # fmt: skip
        if self.several:
            targets.answers = answers
            targets.answer_weights = answer_weights if confident else None
            if scores:
                if self._needs_scores():
                    targets.scores = (scores[0] if len(scores) == 1 else
                                      mean_distribution_logits(scores, d.score_kd_temperature))  # fmt: skip
                mean_probs = torch.stack([s.softmax(-1)[..., 0] for s in scores]).mean(0)
                targets.one_answer = (mean_probs >= d.box_kd_threshold).sum(dim=1) == 1
        return targets

    @staticmethod
    def _target_sets(batch: Batch) -> list[torch.Tensor]:
        """The ground truth as B tensors (T_i, 4): ``batch.targets`` where every phrase has one
        target, else ``batch.target_sets``."""
        if batch.targets is not None:
            return as_target_sets(batch.targets)
        if batch.target_sets is None:
            raise ValueError("the 'full' distillation objective trains on ground truth: the batch has no targets "
                             "(distill.objective=teacher distils without it)")  # fmt: skip
        return [t.float() for t in batch.target_sets]

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        teacher = self._teacher_targets(batch)
        with FeatureRecorder(self.student, self.at_student) as recorder:
            # Every cell's box, in eval mode too: the box losses read them.
            out = self.student(batch.images, batch.pixel_mask, batch.input_ids, batch.text_mask, all_cells=True)
        if (teacher.cells is not None or teacher.scores is not None) and tuple(out["grid"]) != teacher.grid:
            raise ValueError(f"distill.cell_kd: the teacher's distribution is over a {teacher.grid} grid of cells, the "
                             f"student's over {tuple(out['grid'])}: cell KD needs one grid (a student keeps its "
                             f"teacher's image size and stem strides); set distill.cell_kd=0 and distill.score_kd=0")  # fmt: skip
        if teacher.scores is not None and teacher.scores.shape[1] != out["token"]["logits"].shape[1]:
            raise ValueError(f"distill.score_kd: the teacher's token branch scores {teacher.scores.shape[1]} answers, the "
                             f"student's {out['token']['logits'].shape[1]} cells: score KD needs a teacher whose every "
                             f"cell answers (a 'cells' head); set distill.score_kd=0")  # fmt: skip
        heads = token_heads(out["token"])
        if self.objective == "teacher":
            losses = self._teacher_losses(batch, out, heads, teacher)
        else:
            losses = self._full_losses(batch, out, heads, teacher, recorder)
        weights = self.weight_dict
        total = sum(losses[k] * weights[k] for k in losses)
        if self.training:
            self.step += 1
        logs = {k: float(v.detach()) for k, v in losses.items()}
        if teacher.confidence is not None:
            logs["teacher_confidence"] = float(teacher.confidence.mean())
        if teacher.answers is not None:
            logs["teacher_answers"] = sum(len(a) for a in teacher.answers[0]) / len(teacher.answers[0])
        return total, logs

    def _box_kd(self, out: dict, heads: list[dict], teacher: TeacherTargets) -> dict[str, torch.Tensor]:
        """Every head's cell boxes regress the teacher's box, on the cells that lie on that box;
        with several answers, each of the teacher's answers on the cells that lie on it (each
        teacher's, averaged over the teachers)."""
        d = self.config.distill
        if d.box_kd <= 0:
            return {}
        if teacher.answers is not None:
            return self._answer_box_kd(out, heads, teacher)
        positives = positive_cells(teacher.boxes, out["grid"])
        weights = teacher.confidence if d.box_kd_confidence else None
        scale = weights.mean() if weights is not None else 1.0
        kd = [cell_box_losses(h["cell_boxes"], teacher.boxes, positives, weights) for h in heads]
        return {"loss_box_kd_l1": sum(k[0] for k in kd) * scale, "loss_box_kd_giou": sum(k[1] for k in kd) * scale}

    def _answer_box_kd(self, out: dict, heads: list[dict], teacher: TeacherTargets) -> dict[str, torch.Tensor]:
        confident = self.config.distill.box_kd_confidence and teacher.answer_weights is not None
        device = out["token"]["cell_boxes"].device
        l1 = giou = out["token"]["cell_boxes"].float().sum() * 0.0  # no answer in the batch: nothing moves
        for j, answers in enumerate(teacher.answers):
            weights = teacher.answer_weights[j] if confident else None
            samples, cells, goals, shares = answer_cells(answers, weights, out["grid"], device)
            if len(samples) == 0:
                continue
            scale = torch.cat(weights).mean() if weights is not None else 1.0
            for h in heads:
                parts = box_losses(h["cell_boxes"][samples, cells], goals, shares)
                l1, giou = l1 + parts[0] * scale / len(teacher.answers), giou + parts[1] * scale / len(teacher.answers)
        return {"loss_box_kd_l1": l1, "loss_box_kd_giou": giou}

    def _teacher_losses(self, batch: Batch, out: dict, heads: list[dict], teacher: TeacherTargets) -> dict:
        """TAKFL's per-teacher objective; the ground truth (``batch.targets``, ``batch.target_sets``)
        is never read (it may be None)."""
        d = self.config.distill
        losses = self._box_kd(out, heads, teacher)
        if teacher.cells is None and not self._needs_scores():
            return losses
        with torch.no_grad():
            start = self._start[0](batch.images, batch.pixel_mask, batch.input_ids, batch.text_mask)
        pairs = list(zip(heads, token_heads(start["token"]), strict=True))
        if teacher.cells is not None:
            # Several answers: the distribution over cells where the teacher answers with one cell.
            rows = teacher.one_answer.nonzero()[:, 0] if self.several else slice(None)
            losses["loss_takfl_cells"] = sum(
                self_regularised_kd_loss(cell_distribution(h, "the student's")[rows], teacher.cells[rows],
                                         cell_distribution(s, "the start")[rows], d.kd_temperature, d.self_temperature,
                                         d.self_regularization, kd=cell_kd_loss)
                if _count(rows, h) else h["ref_logits"].float().sum() * 0.0
                for h, s in pairs
            )  # fmt: skip
        if self._needs_scores():
            losses["loss_takfl_scores"] = sum(
                self_regularised_kd_loss(cell_scores(h, "the student's"), teacher.scores, cell_scores(s, "the start"),
                                         d.score_kd_temperature, d.self_temperature, d.self_regularization,
                                         kd=joint_kd_loss)
                for h, s in pairs
            )  # fmt: skip
        return losses

    def _full_losses(
        self, batch: Batch, out: dict, heads: list[dict], teacher: TeacherTargets, recorder: FeatureRecorder
    ) -> dict:
        d = self.config.distill
        targets = batch.targets if batch.targets is not None else self._target_sets(batch)
        token, grid = out["token"], out["grid"]
        losses: dict[str, torch.Tensor] = {}

        # Ground truth, as the criterion trains the teacher's token branch (no decoder): one
        # answer, or every cell's score by Hungarian matching of the cells to the targets.
        parts = [self.criterion({"token": h, "grid": grid}, targets)[0] for h in heads]
        for name in ("ce", "l1", "giou"):
            losses[f"loss_gt_{name}"] = sum(p[f"loss_tok_{name}"] for p in parts)
        if self.config.loss.token_ref > 0:
            losses["loss_tok_ref"] = sum(p["loss_tok_ref"] for p in parts)
        if all("loss_tok_presence" in p for p in parts):  # a student with several answers
            losses["loss_gt_presence"] = sum(p["loss_tok_presence"] for p in parts)
        single = None  # the phrases with one target: every one where batch.targets is given
        if batch.targets is None:
            single = single_target_rows(targets, token["ref_logits"].device)
        if token.get("gate") is not None:
            branches = token["branches"]
            if d.one > 0:
                ensemble = cell_logits(token, "the student's")
                losses["loss_one_cells"] = one_kd_loss([cell_logits(b, "the student's") for b in branches], ensemble,
                                                       d.one_temperature)  # fmt: skip
                if self.several:  # the ensemble's per-cell scores teach each branch's, as the teacher's
                    ensemble_scores = cell_scores(token, "the student's").detach()
                    losses["loss_one_scores"] = sum(joint_kd_loss(cell_scores(b, "the student's"), ensemble_scores,
                                                                  d.score_kd_temperature) for b in branches)  # fmt: skip
            if d.one_box > 0:
                if batch.targets is not None:
                    rows, goals, positives = slice(None), token["cell_boxes"].detach(), positive_cells(targets, grid)
                else:
                    rows, _, positives = set_positive_cells(targets, grid, token["cell_boxes"].device)
                    goals = token["cell_boxes"][rows].detach()
                pulls = [cell_box_losses(b["cell_boxes"][rows], goals, positives) for b in branches]
                losses["loss_one_l1"] = sum(p[0] for p in pulls)
                losses["loss_one_giou"] = sum(p[1] for p in pulls)
        if teacher.cells is not None:
            rows = slice(None) if single is None else single
            losses["loss_cell_kd"] = sum(
                cell_kd_loss(cell_distribution(h, "the student's")[rows], teacher.cells[rows], d.kd_temperature)
                if _count(rows, h) else h["ref_logits"].float().sum() * 0.0
                for h in heads
            )  # fmt: skip
        if teacher.scores is not None:
            losses["loss_score_kd"] = sum(joint_kd_loss(cell_scores(h, "the student's"), teacher.scores,
                                                        d.score_kd_temperature) for h in heads)  # fmt: skip
        losses |= self._box_kd(out, heads, teacher)
        if self.at_student:
            student_maps = [recorder.features[n].float() for n in self.at_student]
            losses["loss_at"] = attention_transfer_loss(student_maps, [m.float() for m in teacher.maps])
        if self.mimic is not None:
            losses["loss_mimic"] = self.mimic(out["object_token"].float(), teacher.token)
        if self.auxiliary is not None:
            losses |= self.auxiliary(self.student, out, batch)
        return losses


def _count(rows: torch.Tensor | slice, head: dict) -> int:
    """How many samples ``rows`` selects of a head's batch."""
    return len(head["ref_logits"]) if isinstance(rows, slice) else len(rows)
