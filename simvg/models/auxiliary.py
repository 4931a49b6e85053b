"""Auxiliary losses: word alignment and category supervision on the referred object's visual
token before fusion, category supervision of every annotated object's token (training aids
for a visual stem that starts from scratch), and landmark offsets on the fused visual tokens
(for relational phrases).

They live in the training module next to the model (their heads are not saved with it).
The first two read the model's ``visual_content`` output, which only the hybrid encoder gives.
"""

from __future__ import annotations

import torch
from torch import nn

from simvg.data.dataset import Batch
from simvg.models.category import CategoryLoss, scene_object_cells
from simvg.models.criterion import centre_cells
from simvg.models.landmark import LandmarkOffsetLoss, landmark_reference_loss
from simvg.models.word_alignment import WordAlignmentLoss


def single_target_rows(batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples of ``batch`` with exactly one target (M,) and their targets (M, 4)
    normalised cxcywh: every sample where ``batch.targets`` is given, else those whose target
    set holds one box."""
    if batch.targets is not None:
        return torch.arange(len(batch.targets), device=device), batch.targets
    rows = [i for i, t in enumerate(batch.target_sets) if len(t) == 1]
    targets = [batch.target_sets[i][0] for i in rows]
    stacked = torch.stack(targets).to(device) if targets else torch.zeros(0, 4, device=device)
    return torch.tensor(rows, dtype=torch.long, device=device), stacked


class AuxiliaryLosses(nn.Module):
    """forward(model, outputs, batch) -> {"loss_word_alignment", "loss_category",
    "loss_scene_category", "loss_landmark_offset", "loss_landmark_ref"} (those configured),
    unweighted; ``loss_landmark_ref`` trains the token branch's landmark pointer (every ONE
    branch's, averaged);
    ``weight_dict`` holds their weights. The scene loss (``scene_category``) reuses the
    category classifier on every object in ``meta["objects"]``."""

    def __init__(
        self,
        word_alignment: WordAlignmentLoss | None,
        category: CategoryLoss | None,
        weight_dict: dict[str, float],
        landmark: LandmarkOffsetLoss | None = None,
        scene_category: bool = False,
        landmark_ref: bool = False,
    ):
        if scene_category and category is None:
            raise ValueError("scene category supervision needs the category classifier")
        super().__init__()
        self.word_alignment = word_alignment
        self.category = category
        self.landmark = landmark
        self.scene_category = scene_category
        self.landmark_ref = landmark_ref
        self.weight_dict = weight_dict

    def forward(self, model: nn.Module, outputs: dict, batch: Batch) -> dict[str, torch.Tensor]:
        losses = {}
        if self.landmark is not None:
            landmarks = [m.get("landmark") for m in batch.meta]
            losses["loss_landmark_offset"] = self.landmark(
                outputs["visual_tokens"], outputs["visual_mask"], outputs["grid"], landmarks
            )
        if self.landmark_ref:
            landmarks = [m.get("landmark") for m in batch.meta]
            branches = outputs["token"].get("branches") or [outputs["token"]]
            per_branch = [landmark_reference_loss(b["landmark_logits"], outputs["grid"], landmarks) for b in branches]
            losses["loss_landmark_ref"] = sum(per_branch) / len(per_branch)
        if self.word_alignment is None and self.category is None:
            return losses
        content = outputs["visual_content"]
        # The referred object's token is known where a phrase has exactly one target.
        rows, targets = single_target_rows(batch, content.device)
        cells = centre_cells(targets, outputs["grid"])
        if self.word_alignment is not None:
            words = model.encoder.word_embedding_matrix()
            losses["loss_word_alignment"] = self.word_alignment(content[rows], cells, batch.input_ids[rows],
                                                                batch.text_mask[rows], words)  # fmt: skip
        if self.category is not None and self.weight_dict.get("loss_category", 0) > 0:
            categories = [batch.meta[i].get("category") for i in rows.tolist()]
            losses["loss_category"] = self.category(content, cells, categories, rows)
        if self.scene_category:
            losses["loss_scene_category"] = self._scene_category(content, outputs["grid"], batch)
        return losses

    def _scene_category(self, content: torch.Tensor, grid: tuple[int, int], batch: Batch) -> torch.Tensor:
        rows, cells, categories = scene_object_cells(batch.meta, grid)
        return self.category(content, cells.to(content.device), categories, rows.to(content.device))
