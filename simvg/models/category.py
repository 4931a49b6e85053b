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

from simvg.models.criterion import point_cells

IGNORE = -100


def scene_object_cells(metas: Sequence[dict], grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Every object listed in ``metas[i]["objects"]`` (cx, cy normalised, category), as
    (rows (M,), cells (M,), M categories): its sample, the row-major cell of a ``grid`` that
    holds its centre, its category."""
    rows, centres, categories = [], [], []
    for row, meta in enumerate(metas):
        for cx, cy, category in meta.get("objects") or []:
            rows.append(row)
            centres.append((cx, cy))
            categories.append(category)
    cells = point_cells(torch.tensor(centres, dtype=torch.float32).reshape(-1, 2), grid)
    return torch.tensor(rows, dtype=torch.long), cells, categories


class CategoryLoss(nn.Module):
    """forward(content (B, N, W), cells (M,), categories: M labels or None, rows (M,) or None)
    -> scalar cross-entropy of a linear classifier on tokens ``content[rows, cells]`` (``rows``
    None: one object per sample, ``rows`` = 0..B-1; ``cells``: the index of the token holding
    each object's centre). Labels outside ``categories`` and None are ignored; no known label
    gives 0."""

    def __init__(self, width: int, categories: Sequence[Hashable]):
        super().__init__()
        if not categories:
            raise ValueError("CategoryLoss needs at least one category")
        self.index = {category: i for i, category in enumerate(categories)}
        self.classifier = nn.Linear(width, len(categories))

    def forward(
        self,
        content: torch.Tensor,
        cells: torch.Tensor,
        categories: Sequence[Hashable | None],
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        labels = torch.tensor([self.index.get(c, IGNORE) for c in categories], device=content.device, dtype=torch.long)
        if rows is None:
            rows = torch.arange(len(cells), device=cells.device)
        logits = self.classifier(content[rows, cells]).float()
        if not (labels != IGNORE).any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits, labels, ignore_index=IGNORE)
