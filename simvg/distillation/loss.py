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

The teachers and the start model are frozen and kept out of this module's parameters and
state dict.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from distill.hooks import FeatureRecorder
from distill.losses import FeatureMimic, attention_transfer_loss, kd_loss, mean_distribution_logits
from distill.one import one_kd_loss, sigmoid_rampup
from distill.takfl import self_regularised_kd_loss
from simvg.config import Config
from simvg.data.dataset import Batch
from simvg.models import SimVG
from simvg.models.auxiliary import AuxiliaryLosses
from simvg.models.criterion import (
    cell_box_losses,
    paired_iou,
    positive_cells,
    reference_loss,
)
from simvg.models.heads.token_branch import MultiBranchTokenHead
from simvg.models.postprocess import select_boxes
from simvg.models.set_loss import class_loss

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


@dataclass
class TeacherTargets:
    """What the frozen teachers say about a batch, averaged over the teachers where several.

    boxes: (B, 4) normalised cxcywh; cells: (B, N) logits whose softmax at
    ``distill.kd_temperature`` is the teachers' mean distribution over cells (None when no
    loss reads it); grid: the teachers' (h, w); confidence: (B,) DWBD-style weights, teacher
    score x IoU with the ground truth (None in the "teacher" objective, which never reads the
    ground truth); token: (B, D) the first teacher's object token; maps: its stem stage maps.
    """

    boxes: torch.Tensor
    cells: torch.Tensor | None
    grid: tuple[int, int]
    confidence: torch.Tensor | None
    token: torch.Tensor
    maps: list[torch.Tensor]


class DistillationLoss(nn.Module):
    """forward(batch) -> (weighted total, logs) for a student learning from frozen teachers.

    With several teachers, their boxes are averaged and so are their distributions over cells
    (the plain multi-teacher baseline). ``start_model`` (frozen; the student at its start
    weights) gives the "teacher" objective's self-regularisation target and is required by
    it. ``auxiliary`` (optional, "full" only) adds word alignment / category supervision of
    the student's visual tokens, as for a teacher with a fresh stem.
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
        self.student = student
        self.auxiliary = auxiliary if self.objective == "full" else None
        self.config = config
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

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        for model in self._frozen + self._start:
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
        weight in ``loss_takfl_cells``, DWBD's mean confidence in the box KD."""
        d, loss = self.config.distill, self.config.loss
        ramp = sigmoid_rampup(float(self.step), d.one_rampup_fraction * self.config.train.max_steps)
        return {
            "loss_gt_ce": d.gt * loss.ce, "loss_gt_l1": d.gt * loss.l1, "loss_gt_giou": d.gt * loss.giou,
            "loss_tok_ref": d.gt * loss.token_ref,
            "loss_one_cells": d.one * ramp,
            "loss_one_l1": d.one_box * ramp * loss.l1, "loss_one_giou": d.one_box * ramp * loss.giou,
            "loss_cell_kd": d.cell_kd, "loss_takfl_cells": d.cell_kd,
            "loss_box_kd_l1": d.box_kd * loss.l1, "loss_box_kd_giou": d.box_kd * loss.giou,
            "loss_at": d.attention_transfer, "loss_mimic": d.feature_mimic,
        } | (self.auxiliary.weight_dict if self.auxiliary is not None else {})  # fmt: skip

    def _needs_cells(self) -> bool:
        return self.config.distill.cell_kd > 0

    @torch.no_grad()
    def _teacher_targets(self, batch: Batch) -> TeacherTargets:
        d = self.config.distill
        confident = self.objective == "full"
        boxes, cells, confidences, tokens, maps = [], [], [], [], []
        for teacher in self._frozen:
            use_decoder = d.teacher_branch == "decoder"
            with FeatureRecorder(teacher, self.at_teacher) as recorder:
                out = teacher(batch.images, batch.pixel_mask, batch.input_ids, batch.text_mask, use_decoder=use_decoder)
            teacher_boxes, scores = select_boxes(out, d.teacher_branch)
            boxes.append(teacher_boxes.float())
            if self._needs_cells():
                cells.append(cell_logits(out["token"], "the teacher's"))
            if confident:
                confidences.append(scores * paired_iou(teacher_boxes, batch.targets))
            tokens.append(out["object_token"].float())
            maps.append([recorder.features[n] for n in self.at_teacher])
        distribution = None
        if cells:
            distribution = cells[0] if len(cells) == 1 else mean_distribution_logits(cells, d.kd_temperature)
        return TeacherTargets(
            boxes=torch.stack(boxes).mean(0), cells=distribution, grid=tuple(out["grid"]),
            confidence=torch.stack(confidences).mean(0) if confident else None, token=tokens[0], maps=maps[0],
        )  # fmt: skip

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        teacher = self._teacher_targets(batch)
        with FeatureRecorder(self.student, self.at_student) as recorder:
            # Every cell's box, in eval mode too: the box losses read them.
            out = self.student(batch.images, batch.pixel_mask, batch.input_ids, batch.text_mask, all_cells=True)
        if teacher.cells is not None and tuple(out["grid"]) != teacher.grid:
            raise ValueError(f"distill.cell_kd: the teacher's distribution is over a {teacher.grid} grid of cells, the "
                             f"student's over {tuple(out['grid'])}: cell KD needs one grid (a student keeps its "
                             f"teacher's image size and stem strides); set distill.cell_kd=0")  # fmt: skip
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
        return total, logs

    def _box_kd(self, out: dict, heads: list[dict], teacher: TeacherTargets) -> dict[str, torch.Tensor]:
        """Every head's cell boxes regress the teacher's box, on the cells that lie on that box."""
        if self.config.distill.box_kd <= 0:
            return {}
        positives = positive_cells(teacher.boxes, out["grid"])
        weights = teacher.confidence if self.config.distill.box_kd_confidence else None
        scale = weights.mean() if weights is not None else 1.0
        kd = [cell_box_losses(h["cell_boxes"], teacher.boxes, positives, weights) for h in heads]
        return {"loss_box_kd_l1": sum(k[0] for k in kd) * scale, "loss_box_kd_giou": sum(k[1] for k in kd) * scale}

    def _teacher_losses(self, batch: Batch, out: dict, heads: list[dict], teacher: TeacherTargets) -> dict:
        """TAKFL's per-teacher objective; ``batch.targets`` is never read (it may be None)."""
        d = self.config.distill
        losses = self._box_kd(out, heads, teacher)
        if teacher.cells is not None:
            with torch.no_grad():
                start = self._start[0](batch.images, batch.pixel_mask, batch.input_ids, batch.text_mask)
            losses["loss_takfl_cells"] = sum(
                self_regularised_kd_loss(cell_logits(h, "the student's"), teacher.cells, cell_logits(s, "the start"),
                                         d.kd_temperature, d.self_temperature, d.self_regularization)
                for h, s in zip(heads, token_heads(start["token"]), strict=True)
            )  # fmt: skip
        return losses

    def _score_loss(self, head: dict, targets: torch.Tensor) -> torch.Tensor:
        """The answer's score against "object", or its box's IoU with the target (loss.score_target
        "iou", the "cells" head's default: simvg.models.set_loss)."""
        if (self.config.loss.score_target or "iou") == "label":
            goal = torch.ones(len(targets), device=targets.device)
        else:
            goal = paired_iou(head["boxes"].detach(), targets)
        return class_loss(head["logits"], goal, torch.ones_like(goal))

    def _full_losses(
        self, batch: Batch, out: dict, heads: list[dict], teacher: TeacherTargets, recorder: FeatureRecorder
    ) -> dict:
        d = self.config.distill
        targets = batch.targets
        if targets is None:
            raise ValueError("the 'full' distillation objective trains on ground truth: every sample needs one box "
                             "(distill.objective=teacher distils without it)")  # fmt: skip
        token = out["token"]
        positives = positive_cells(targets, out["grid"])
        losses: dict[str, torch.Tensor] = {}

        parts = [cell_box_losses(h["cell_boxes"], targets, positives) for h in heads]
        losses["loss_gt_ce"] = sum(self._score_loss(h, targets) for h in heads)
        losses["loss_gt_l1"] = sum(p[0] for p in parts)
        losses["loss_gt_giou"] = sum(p[1] for p in parts)
        if self.config.loss.token_ref > 0:
            losses["loss_tok_ref"] = sum(reference_loss(h["ref_logits"], out["grid"], targets, h.get("content_logits"))
                                         for h in heads)  # fmt: skip
        if token.get("gate") is not None:
            branches = token["branches"]
            if d.one > 0:
                ensemble = cell_logits(token, "the student's")
                losses["loss_one_cells"] = one_kd_loss([cell_logits(b, "the student's") for b in branches], ensemble,
                                                       d.one_temperature)  # fmt: skip
            if d.one_box > 0:
                ensemble_boxes = token["cell_boxes"].detach()
                pulls = [cell_box_losses(b["cell_boxes"], ensemble_boxes, positives) for b in branches]
                losses["loss_one_l1"] = sum(p[0] for p in pulls)
                losses["loss_one_giou"] = sum(p[1] for p in pulls)
        if teacher.cells is not None:
            losses["loss_cell_kd"] = sum(kd_loss(cell_logits(h, "the student's"), teacher.cells, d.kd_temperature)
                                         for h in heads)  # fmt: skip
        losses |= self._box_kd(out, heads, teacher)
        if self.at_student:
            student_maps = [recorder.features[n].float() for n in self.at_student]
            losses["loss_at"] = attention_transfer_loss(student_maps, [m.float() for m in teacher.maps])
        if self.mimic is not None:
            losses["loss_mimic"] = self.mimic(out["object_token"].float(), teacher.token)
        if self.auxiliary is not None:
            losses |= self.auxiliary(self.student, out, batch)
        return losses
