"""DETR's post-norm transformer decoder, as SimVG's head uses it (built by detrex there).

Ours (the "cells" head) has its own decoder layer in decoder_branch.py, which returns the
cross-attention weights it predicts boxes relative to; this one is SimVG's, for its query
generator and its decoder branch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DetrDecoderLayer(nn.Module):
    """Self-attention among the queries, cross-attention to the memory, a ReLU FFN; each adds
    its output to its input and is followed by a LayerNorm (post-norm).

    Positions are added to queries and keys, never to values. Dropout acts on the attention
    weights and inside the FFN (after the ReLU and after the second Linear), not on the
    attention outputs (detrex's MultiheadAttention has no output dropout by default).
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(
        self,
        target: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        memory_padding: torch.Tensor | None,
    ) -> torch.Tensor:
        """target, query_pos: (B, Q, D); memory: (B, N, D); memory_pos: (B or 1, N, D);
        memory_padding: (B, N) bool, True = ignore (None: attend to all) -> (B, Q, D)."""
        q = target + query_pos
        target = self.norm1(target + self.self_attn(q, q, target, need_weights=False)[0])
        attended = self.cross_attn(
            target + query_pos,
            memory + memory_pos,
            memory,
            key_padding_mask=memory_padding,
            need_weights=False,
        )[0]
        target = self.norm2(target + attended)
        return self.norm3(
            target + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(target)))))
        )


class DetrDecoder(nn.Module):
    """``num_layers`` :class:`DetrDecoderLayer` and a final LayerNorm, applied to the output of
    every layer that is returned (DETR's intermediate outputs share it)."""

    def __init__(self, dim: int, num_layers: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(
            DetrDecoderLayer(dim, num_heads, ffn_dim, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        target: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        memory_padding: torch.Tensor | None,
        all_layers: bool = True,
    ) -> list[torch.Tensor]:
        """Arguments as :meth:`DetrDecoderLayer.forward`; returns the normalised output of
        every layer (``all_layers``) or of the last one only, each (B, Q, D)."""
        outputs = []
        for i, layer in enumerate(self.layers):
            target = layer(target, query_pos, memory, memory_pos, memory_padding)
            if all_layers or i == len(self.layers) - 1:
                outputs.append(self.norm(target))
        return outputs
