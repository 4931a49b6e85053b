"""The student's training objective: ground truth, ONE, teacher box KD with DWBD-style
confidence, attention transfer on the stem, token feature mimicking (and, as for a teacher,
auxiliary supervision of its visual tokens).

The teachers are frozen and kept out of this module's parameters and state dict.
"""

from __future__ import annotations

import torch
from torch import nn

from distill.hooks import FeatureRecorder
from distill.losses import FeatureMimic, attention_transfer_loss, kd_loss
from distill.one import sigmoid_rampup
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
from simvg.models.postprocess import select_boxes
from simvg.models.set_loss import class_loss


def stem_stage_names(model: SimVG, stages: list[int]) -> list[str]:
    stem = getattr(model.encoder, "stem", None)
    if stem is None:
        return []
    return [f"encoder.stem.stages.{i}" for i in stages if i < len(stem.stages)]


class DistillationLoss(nn.Module):
    """forward(batch) -> (weighted total, logs) for a student learning from frozen teachers.

    With several teachers, their boxes and confidences are averaged (the plain
    multi-teacher baseline). ``start_model`` (optional, frozen) adds TAKFL's
    self-regularisation: the student's boxes stay close to those of its starting weights.
    ``auxiliary`` (optional) adds word alignment / category supervision of the student's
    visual tokens, as for a teacher with a fresh stem.
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
        self.student = student
        self.auxiliary = auxiliary
        self.config = config
        self._frozen = [m.eval().requires_grad_(False) for m in teachers]
        self._start = [start_model.eval().requires_grad_(False)] if start_model is not None else []
        d = config.distill
        self.mimic = None
        if d.feature_mimic > 0:
            self.mimic = FeatureMimic(student.config.head.hidden_dim, teachers[0].config.head.hidden_dim)
        self.at_student = stem_stage_names(student, d.attention_stages) if d.attention_transfer > 0 else []
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
        d, loss = self.config.distill, self.config.loss
        ramp = sigmoid_rampup(float(self.step), d.one_rampup_fraction * self.config.train.max_steps)
        return {
            "loss_gt_ce": d.gt * loss.ce, "loss_gt_l1": d.gt * loss.l1, "loss_gt_giou": d.gt * loss.giou,
            "loss_one_kd": d.one * ramp, "loss_one_l1": d.one * ramp * loss.l1, "loss_one_giou": d.one * ramp * loss.giou,
            "loss_box_kd_l1": d.box_kd * loss.l1, "loss_box_kd_giou": d.box_kd * loss.giou,
            "loss_at": d.attention_transfer, "loss_mimic": d.feature_mimic,
            "loss_self_l1": d.self_regularization * loss.l1, "loss_self_giou": d.self_regularization * loss.giou,
            "loss_tok_ref": d.gt * loss.token_ref,
        } | (self.auxiliary.weight_dict if self.auxiliary is not None else {})  # fmt: skip

    def _score_loss(self, head: dict, targets: torch.Tensor) -> torch.Tensor:
        """The answer's score against "object", or its box's IoU with the target (loss.score_target
        "iou", the "cells" head's default: simvg.models.set_loss)."""
        if (self.config.loss.score_target or "iou") == "label":
            goal = torch.ones(len(targets), device=targets.device)
        else:
            goal = paired_iou(head["boxes"].detach(), targets)
        return class_loss(head["logits"], goal, torch.ones_like(goal))

    @torch.no_grad()
    def _teacher_targets(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, list]:
        """Averaged teacher boxes (B, 4), DWBD-style confidences (B,), object tokens, stem maps."""
        d = self.config.distill
        boxes, confidences, tokens, maps = [], [], [], []
        for teacher in self._frozen:
            use_decoder = d.teacher_branch == "decoder"
            with FeatureRecorder(teacher, self.at_teacher) as recorder:
                out = teacher(batch.images, batch.pixel_mask, batch.input_ids, batch.text_mask, use_decoder=use_decoder)
            teacher_boxes, scores = select_boxes(out, d.teacher_branch)
            boxes.append(teacher_boxes.float())
            confidences.append(scores * paired_iou(teacher_boxes, batch.targets))
            tokens.append(out["object_token"].float())
            maps.append([recorder.features[n] for n in self.at_teacher])
        return torch.stack(boxes).mean(0), torch.stack(confidences).mean(0), tokens[0], maps[0]

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        d = self.config.distill
        teacher_boxes, confidence, teacher_token, teacher_maps = self._teacher_targets(batch)
        with FeatureRecorder(self.student, self.at_student) as recorder:
            out = self.student(batch.images, batch.pixel_mask, batch.input_ids, batch.text_mask)
        token = out["token"]
        one = token.get("gate") is not None
        heads = list(token["branches"]) + [token] if one else [token]
        targets = batch.targets
        losses: dict[str, torch.Tensor] = {}
        positives = positive_cells(targets, out["grid"])

        def box_terms(head: dict, goal: torch.Tensor, weights: torch.Tensor | None = None):
            return cell_box_losses(head["cell_boxes"], goal, positives, weights)

        parts = [box_terms(h, targets) for h in heads]
        losses["loss_gt_ce"] = sum(self._score_loss(h, targets) for h in heads)
        losses["loss_gt_l1"] = sum(p[0] for p in parts)
        losses["loss_gt_giou"] = sum(p[1] for p in parts)
        if one and d.one > 0:
            ensemble = token["cell_boxes"].detach()
            losses["loss_one_kd"] = sum(
                kd_loss(b["logits"].float(), token["logits"].float(), d.one_temperature) for b in token["branches"]
            )
            pulls = [box_terms(b, ensemble) for b in token["branches"]]
            losses["loss_one_l1"] = sum(p[0] for p in pulls)
            losses["loss_one_giou"] = sum(p[1] for p in pulls)
        if d.box_kd > 0:
            weights = confidence if d.box_kd_confidence else None
            scale = confidence.mean() if d.box_kd_confidence else 1.0
            kd = [box_terms(h, teacher_boxes, weights) for h in heads]
            losses["loss_box_kd_l1"] = sum(k[0] for k in kd) * scale
            losses["loss_box_kd_giou"] = sum(k[1] for k in kd) * scale
        if self.at_student:
            student_maps = [recorder.features[n].float() for n in self.at_student]
            losses["loss_at"] = attention_transfer_loss(student_maps, [m.float() for m in teacher_maps])
        if self.mimic is not None:
            losses["loss_mimic"] = self.mimic(out["object_token"].float(), teacher_token)
        if self._start and d.self_regularization > 0:
            with torch.no_grad():
                start = self._start[0](batch.images, batch.pixel_mask, batch.input_ids, batch.text_mask, all_cells=True)
            pulls = [box_terms(h, start["token"]["cell_boxes"]) for h in heads]
            losses["loss_self_l1"] = sum(p[0] for p in pulls)
            losses["loss_self_giou"] = sum(p[1] for p in pulls)
        if self.config.loss.token_ref > 0:
            losses["loss_tok_ref"] = sum(reference_loss(h["ref_logits"], out["grid"], targets, h.get("content_logits"))
                                         for h in heads)  # fmt: skip
        if self.auxiliary is not None:
            losses |= self.auxiliary(self.student, out, batch)
        weights = self.weight_dict
        total = sum(losses[k] * weights[k] for k in losses)
        if self.training:
            self.step += 1
        logs = {k: float(v.detach()) for k, v in losses.items()}
        logs["teacher_confidence"] = float(confidence.mean())
        return total, logs
