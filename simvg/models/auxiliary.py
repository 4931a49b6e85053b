"""Auxiliary losses on the referred object's visual token before fusion: word alignment and
category supervision, training aids for a visual stem that starts from scratch.

They live in the training module next to the model (their heads are not saved with it) and
read the model's ``visual_content`` output, which only the hybrid encoder gives.
"""

from __future__ import annotations

import torch
from torch import nn

from simvg.data.dataset import Batch
from simvg.models.category import CategoryLoss
from simvg.models.criterion import centre_cells
from simvg.models.word_alignment import WordAlignmentLoss


class AuxiliaryLosses(nn.Module):
    """forward(model, outputs, batch) -> {"loss_word_alignment", "loss_category"} (those
    configured), unweighted; ``weight_dict`` holds their weights."""

    def __init__(
        self,
        word_alignment: WordAlignmentLoss | None,
        category: CategoryLoss | None,
        weight_dict: dict[str, float],
    ):
        super().__init__()
        self.word_alignment = word_alignment
        self.category = category
        self.weight_dict = weight_dict

    def forward(self, model: nn.Module, outputs: dict, batch: Batch) -> dict[str, torch.Tensor]:
        content = outputs["visual_content"]
        cells = centre_cells(batch.targets, outputs["grid"])
        losses = {}
        if self.word_alignment is not None:
            words = model.encoder.word_embedding_matrix()
            losses["loss_word_alignment"] = self.word_alignment(content, cells, batch.input_ids, batch.text_mask, words)
        if self.category is not None:
            losses["loss_category"] = self.category(content, cells, [m.get("category") for m in batch.meta])
        return losses
