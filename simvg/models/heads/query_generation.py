"""Text-guided query generation (TQG): learnable queries read the phrase."""

from __future__ import annotations

import torch
from torch import nn


def masked_max_pool(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """tokens: (B, L, D), mask: (B, L) bool -> (B, D) max over the valid tokens."""
    fill = torch.finfo(tokens.dtype).min
    return tokens.masked_fill(~mask[..., None], fill).amax(dim=1)


class TextGuidedQueryGenerator(nn.Module):
    """Queries (Q, D) cross-attend to the projected text tokens through a small transformer
    decoder; the result plus the max-pooled text plus the query embedding is the query.

    Returns (B, Q, D).
    """

    def __init__(self, dim: int, num_queries: int, num_layers: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.query_embed = nn.Embedding(num_queries, dim)
        layer = nn.TransformerDecoderLayer(dim, num_heads, ffn_dim, dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, num_layers)

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        queries = self.query_embed.weight[None].expand(text.shape[0], -1, -1)
        out = self.decoder(queries, text, memory_key_padding_mask=~text_mask)
        return out + masked_max_pool(text, text_mask)[:, None] + queries
