"""SimVG's token branch, as its official code builds it.

SimVG's, not ours: the "simvg" head reproduces the published model (its released weights
load into it). The "cells" head's token branch (token_branch.py) is ours: it points at a
visual token and regresses that cell's box, which learns from far fewer samples on SynthRef.
"""

from __future__ import annotations

import torch
from torch import nn

from simvg.models.heads.mlp import MLP


class SimVGTokenBranch(nn.Module):
    """The object token (plus its query) -> Linear -> a 2-way class head and a box MLP with a
    sigmoid: an absolute box, normalised cx, cy, w, h. One scored box per query.

    forward(tokens (B, Q, D)) -> {"logits": (B, Q, 2), "boxes": (B, Q, 4)}; class 0 = object.
    """

    def __init__(self, dim: int, box_mlp_layers: int = 3):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.class_head = nn.Linear(dim, 2)
        self.box_head = MLP(dim, dim, 4, box_mlp_layers)

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.proj(tokens)
        return {"logits": self.class_head(x), "boxes": self.box_head(x).float().sigmoid()}
