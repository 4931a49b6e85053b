"""Category supervision: the referred object's visual token, before it meets the text,
classifies the object's category where the annotations give one (RefCOCO's COCO
``category_id``, SynthRef's "size colour shape").

A training aid for a visual stem that starts from scratch, as word alignment is, with a
cleaner signal: every record names its object's category, while a phrase names the shape
only half the time ("the big yellow object on the far right"). Nothing of it is used at
inference (it lives in the training module, not in the model).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100


class CategoryLoss(nn.Module):
    """forward(content (B, N, W), cells (B,), categories: B labels or None) -> scalar
    cross-entropy of a linear classifier on each referred object's token (``cells``: the index
    of the token holding its centre). Labels outside ``categories`` and None are ignored; a
    batch without any known label gives 0."""

    def __init__(self, width: int, categories: Sequence[Hashable]):
        super().__init__()
        if not categories:
            raise ValueError("CategoryLoss needs at least one category")
        self.index = {category: i for i, category in enumerate(categories)}
        self.classifier = nn.Linear(width, len(categories))

    def forward(self, content: torch.Tensor, cells: torch.Tensor, categories: Sequence[Hashable | None]) -> torch.Tensor:
        labels = torch.tensor([self.index.get(c, IGNORE) for c in categories], device=content.device)
        rows = torch.arange(len(cells), device=cells.device)
        logits = self.classifier(content[rows, cells]).float()
        if not (labels != IGNORE).any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits, labels, ignore_index=IGNORE)
