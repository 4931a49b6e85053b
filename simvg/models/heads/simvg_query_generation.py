"""SimVG's text-guided query generation (TQG), as its official code runs it.

SimVG's, not ours: the "simvg" head reproduces the published model so that its released
weights give its published outputs. (The "cells" head has its own query generator in
query_generation.py: a plain ``nn.TransformerDecoder`` whose queries are its input, without
positions or a final LayerNorm.)
"""

from __future__ import annotations

import torch
from torch import nn

from simvg.models.heads.detr_layers import DetrDecoder
from simvg.models.heads.position_encoding import simvg_text_position_encoding
from simvg.models.heads.query_generation import masked_max_pool


class SimVGQueryGenerator(nn.Module):
    """Learnable queries read the phrase through a small DETR decoder.

    The decoder's target starts at zero and the query embedding is the query position in
    every layer; the text tokens are the memory, with SimVG's 1-D text positions
    (:func:`~simvg.models.heads.position_encoding.simvg_text_position_encoding`) added to the
    keys; the decoder's final LayerNorm is applied to its output. The result plus the
    max-pooled text plus the query embedding is the query.

    forward(text (B, L, D) projected text tokens, text_mask (B, L) bool, True = a token) ->
    (B, Q, D).
    """

    def __init__(
        self,
        dim: int,
        num_queries: int,
        num_layers: int,
        num_heads: int,
        ffn_dim: int,
        dropout: float,
    ):
        super().__init__()
        self.query_embed = nn.Embedding(num_queries, dim)
        self.decoder = DetrDecoder(dim, num_layers, num_heads, ffn_dim, dropout)

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        batch, length, dim = text.shape
        # A copy, not a view: under no_grad a view of a parameter keeps requires_grad without a
        # grad_fn, which module hooks (torch.utils.flop_counter's tracker) cannot follow.
        queries = self.query_embed.weight[None].repeat(batch, 1, 1)
        positions = simvg_text_position_encoding(length, dim).to(text.device, text.dtype)[None]
        generated = self.decoder(
            torch.zeros_like(queries), queries, text, positions, ~text_mask, all_layers=False
        )[-1]
        return generated + masked_max_pool(text, text_mask)[:, None] + queries
