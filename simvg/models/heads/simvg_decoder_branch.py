"""SimVG's decoder branch, as its official code builds it.

SimVG's, not ours: a DETR decoder whose boxes are absolute (a sigmoid of the box MLP's
output), so the "simvg" head reproduces the published model. The "cells" head's decoder
branch (decoder_branch.py) is ours: it predicts each box relative to where its
cross-attention reads, which learns from fewer samples.
"""

from __future__ import annotations

import torch
from torch import nn

from simvg.models.heads.detr_layers import DetrDecoder
from simvg.models.heads.mlp import MLP


class SimVGDecoderBranch(nn.Module):
    """Queries start at zero with the query generator's output as their position in every
    layer, and read the visual tokens (with 2-D sine positions on the keys).

    forward returns {"logits": (B, Q, 2), "boxes": (B, Q, 4), "aux": [one such dict per
    earlier layer, when ``all_layers``]}; boxes normalised cx, cy, w, h; class 0 = object.
    """

    def __init__(
        self,
        dim: int,
        num_layers: int,
        num_heads: int,
        ffn_dim: int,
        dropout: float,
        box_mlp_layers: int = 3,
    ):
        super().__init__()
        self.decoder = DetrDecoder(dim, num_layers, num_heads, ffn_dim, dropout)
        self.class_head = nn.Linear(dim, 2)
        self.box_head = MLP(dim, dim, 4, box_mlp_layers)
        for parameter in self.decoder.parameters():  # as SimVG initialises its DETR transformer
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)

    def _predict(self, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.class_head(hidden), "boxes": self.box_head(hidden).float().sigmoid()}

    def forward(
        self,
        visual: torch.Tensor,
        visual_padding: torch.Tensor,
        visual_pos: torch.Tensor,
        queries: torch.Tensor,
        all_layers: bool = True,
    ) -> dict:
        """visual: (B, N, D); visual_padding: (B, N) bool, True = ignore; visual_pos: (B, N, D);
        queries: (B, Q, D) from the query generator; all_layers: also predict from every
        earlier layer (the auxiliary losses' inputs)."""
        hidden = self.decoder(
            torch.zeros_like(queries), queries, visual, visual_pos, visual_padding, all_layers
        )
        predictions = [self._predict(h) for h in hidden]
        return predictions[-1] | {"aux": predictions[:-1]}
