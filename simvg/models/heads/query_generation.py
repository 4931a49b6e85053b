"""Text-guided query generation (TQG): learnable queries read the phrase."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from simvg.models.heads.derived_weights import DerivedWeights, inference_only


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
    dim = attention.embed_dim
    weight, bias = attention.in_proj_weight, attention.in_proj_bias
    dropout = attention.dropout if attention.training else 0.0
    if memory is query and query.shape[1] == 1 and memory_mask is None and dropout == 0.0:
        return attention.out_proj(F.linear(query, weight[2 * dim :], bias[2 * dim :]))
    return attend_projected(attention, project_queries(attention, query), memory, memory_mask)


def project_queries(attention: nn.MultiheadAttention, query: torch.Tensor) -> torch.Tensor:
    """query (B, Q, D) -> the attention's per-head queries (B, heads, Q, D / heads)."""
    dim, heads = attention.embed_dim, attention.num_heads
    q = F.linear(query, attention.in_proj_weight[:dim], attention.in_proj_bias[:dim])
    return q.view(query.shape[0], query.shape[1], heads, -1).transpose(1, 2)


def attend_projected(attention: nn.MultiheadAttention, q: torch.Tensor, memory: torch.Tensor,
                     memory_mask: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """:func:`attend` from queries already projected by :func:`project_queries`."""
    dim, heads = attention.embed_dim, attention.num_heads
    weight, bias = attention.in_proj_weight, attention.in_proj_bias
    dropout = attention.dropout if attention.training else 0.0
    batch, length = q.shape[0], q.shape[2]
    k, v = F.linear(memory, weight[dim:], bias[dim:]).view(batch, memory.shape[1], 2, heads, -1).permute(2, 0, 3, 1, 4)
    mask = None if memory_mask is None else memory_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    return attention.out_proj(out.transpose(1, 2).reshape(batch, length, dim))


def folded_self_attention(attention: nn.MultiheadAttention) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the one linear map a single query's self-attention is: out_proj of
    its own value, out_proj(W_v x + b_v) = (W_o W_v) x + (W_o b_v + b_o)."""
    dim = attention.embed_dim
    w_v, b_v = attention.in_proj_weight[2 * dim :], attention.in_proj_bias[2 * dim :]
    w_o, b_o = attention.out_proj.weight, attention.out_proj.bias
    return w_o @ w_v, w_o @ b_v + b_o


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
        batch = text.shape[0]
        queries = self.query_embed.weight[None]
        constants = self._inference_constants() if inference_only(self) else None
        # nn.TransformerDecoderLayer's own forward (post-norm, ReLU), written out: at batch 1
        # its per-call checks cost more than the arithmetic of a one-query decoder.
        out = queries.expand(batch, -1, -1)
        for index, layer in enumerate(self.decoder.layers):
            if constants is not None and index == 0:
                out = constants["after_self"].expand(batch, -1, -1)
                cross_queries = constants["cross_queries"].expand(batch, -1, -1, -1)
                cross = attend_projected(layer.multihead_attn, cross_queries, text, text_mask)
            else:
                if constants is not None and constants["folded"] is not None:
                    self_out = F.linear(out, *constants["folded"][index - 1])
                else:
                    self_out = attend(layer.self_attn, out, out)
                out = layer.norm1(out + layer.dropout1(self_out))
                cross = attend(layer.multihead_attn, out, text, text_mask)
            out = layer.norm2(out + layer.dropout2(cross))
            out = layer.norm3(out + layer.dropout3(layer.linear2(layer.dropout(F.relu(layer.linear1(out))))))
        return out + masked_max_pool(text, text_mask)[:, None] + queries

    def _inference_constants(self) -> dict | None:
        """What inference needs that depends on the weights alone, kept between calls: the
        first layer's self-attention block (its input is the fixed query embedding) and its
        cross-attention queries, and each later layer's self-attention folded into one linear
        map (single query only). None if it cannot be kept (see DerivedWeights)."""
        if not hasattr(self, "_derived"):
            self._derived = DerivedWeights()
        return self._derived.get("constants", list(self.parameters()), self._build_constants)

    def _build_constants(self) -> dict:
        first = self.decoder.layers[0]
        queries = self.query_embed.weight[None]
        after_self = first.norm1(queries + attend(first.self_attn, queries, queries))
        folded = [folded_self_attention(layer.self_attn) for layer in self.decoder.layers[1:]]
        return {"after_self": after_self, "cross_queries": project_queries(first.multihead_attn, after_self),
                "folded": folded if queries.shape[1] == 1 else None}  # fmt: skip
