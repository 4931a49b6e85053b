"""Text-guided query generation (TQG): learnable queries read the phrase."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def masked_max_pool(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """tokens: (B, L, D), mask: (B, L) bool -> (B, D) max over the valid tokens."""
    fill = torch.finfo(tokens.dtype).min
    return tokens.masked_fill(~mask[..., None], fill).amax(dim=1)


def attend(attention: nn.MultiheadAttention, query: torch.Tensor, memory: torch.Tensor,
           memory_mask: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """``attention(query, memory, memory, key_padding_mask=~memory_mask)[0]`` of a batch-first
    ``nn.MultiheadAttention`` (its weights, its dropout in training), in fewer kernels.

    query (B, Q, D), memory (B, L, D), memory_mask (B, L) bool, True = attend. A single
    query attending to itself reads its own value alone, which is computed directly.
    """
    dim, heads = attention.embed_dim, attention.num_heads
    weight, bias = attention.in_proj_weight, attention.in_proj_bias
    dropout = attention.dropout if attention.training else 0.0
    if memory is query and query.shape[1] == 1 and memory_mask is None and dropout == 0.0:
        return attention.out_proj(F.linear(query, weight[2 * dim :], bias[2 * dim :]))
    batch, length = query.shape[:2]
    q = F.linear(query, weight[:dim], bias[:dim]).view(batch, length, heads, -1).transpose(1, 2)
    k, v = F.linear(memory, weight[dim:], bias[dim:]).view(batch, memory.shape[1], 2, heads, -1).permute(2, 0, 3, 1, 4)
    mask = None if memory_mask is None else memory_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    return attention.out_proj(out.transpose(1, 2).reshape(batch, length, dim))


class TextGuidedQueryGenerator(nn.Module):
    """Queries (Q, D) cross-attend to the projected text tokens through a small post-norm
    transformer decoder (``nn.TransformerDecoder``'s layers and weights); the result plus the
    max-pooled text plus the query embedding is the query.

    forward(text (B, L, D), text_mask (B, L) bool) returns (B, Q, D).
    """

    def __init__(self, dim: int, num_queries: int, num_layers: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.query_embed = nn.Embedding(num_queries, dim)
        layer = nn.TransformerDecoderLayer(dim, num_heads, ffn_dim, dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, num_layers)

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        queries = self.query_embed.weight[None].expand(text.shape[0], -1, -1)
        # nn.TransformerDecoderLayer's own forward (post-norm, ReLU), written out: at batch 1
        # its per-call checks cost more than the arithmetic of a one-query decoder.
        out = queries
        for layer in self.decoder.layers:
            out = layer.norm1(out + layer.dropout1(attend(layer.self_attn, out, out)))
            out = layer.norm2(out + layer.dropout2(attend(layer.multihead_attn, out, text, text_mask)))
            out = layer.norm3(out + layer.dropout3(layer.linear2(layer.dropout(F.relu(layer.linear1(out))))))
        return out + masked_max_pool(text, text_mask)[:, None] + queries
