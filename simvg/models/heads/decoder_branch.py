"""The "cells" head's decoder branch (ours, not SimVG's: simvg_decoder_branch.py is SimVG's,
with absolute boxes): a small DETR decoder over the visual tokens, queries from TQG.

Each layer's box is predicted relative to a reference point, the expected position of the
tokens its cross-attention reads (as conditional/DAB-DETR do), which makes the decoder
learn to localise from far fewer samples than absolute regression.
"""

from __future__ import annotations

import torch
from torch import nn

from simvg.models.heads.grid import grid_centres
from simvg.models.heads.mlp import MLP
from simvg.models.heads.token_branch import inverse_sigmoid


class DecoderLayer(nn.Module):
    """DETR's post-norm decoder layer: positions are added to queries and keys, not values."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        target: torch.Tensor,
        memory: torch.Tensor,
        memory_padding: torch.Tensor,
        memory_pos: torch.Tensor,
        query_pos: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the updated queries and the cross-attention weights (B, Q, N), head-averaged."""
        q = target + query_pos
        target = self.norm1(target + self.dropout(self.self_attn(q, q, target, need_weights=False)[0]))
        attended, weights = self.cross_attn(
            target + query_pos, memory + memory_pos, memory, key_padding_mask=memory_padding, need_weights=True
        )
        target = self.norm2(target + self.dropout(attended))
        return self.norm3(target + self.dropout(self.ffn(target))), weights


class DecoderBranch(nn.Module):
    """Queries start at zero with the TQG output as their position embedding.

    forward returns {"logits": (B, Q, 2), "boxes": (B, Q, 4), "aux": [per earlier layer]}
    with boxes normalised cx, cy, w, h; class index 0 = object, 1 = no object.
    """

    def __init__(self, dim: int, num_layers: int, num_heads: int, ffn_dim: int, dropout: float, box_mlp_layers: int = 3):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, num_heads, ffn_dim, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.class_head = nn.Linear(dim, 2)
        self.box_head = MLP(dim, dim, 4, box_mlp_layers)

    def _predict(self, hidden: torch.Tensor, reference: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.norm(hidden)
        delta = self.box_head(hidden).float()
        centre = (inverse_sigmoid(reference) + delta[..., :2]).sigmoid()
        return {"logits": self.class_head(hidden), "boxes": torch.cat([centre, delta[..., 2:].sigmoid()], dim=-1)}

    def forward(
        self,
        visual: torch.Tensor,
        visual_padding: torch.Tensor,
        visual_pos: torch.Tensor,
        queries: torch.Tensor,
        grid: tuple[int, int],
        all_layers: bool = True,
    ) -> dict:
        """visual: (B, N, D); visual_padding: (B, N) bool, True = ignore; visual_pos: (N, D);
        queries: (B, Q, D) from TQG; grid: the (h, w) of the visual tokens."""
        target = torch.zeros_like(queries)
        pos = visual_pos[None].to(visual.dtype)
        centres = grid_centres(grid, visual.device)
        aux = []
        for i, layer in enumerate(self.layers):
            target, weights = layer(target, visual, visual_padding, pos, queries)
            if all_layers and i < len(self.layers) - 1:
                aux.append(self._predict(target, weights.float() @ centres))
        out = self._predict(target, weights.float() @ centres)
        out["aux"] = aux
        return out
