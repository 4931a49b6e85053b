"""The "cells" head's text-guided query generation (TQG): learnable queries read the phrase.

Ours, not SimVG's (simvg_query_generation.py is SimVG's): the queries are the decoder's input
(not a zero target with the queries as positions), the text keys carry no positions and there
is no final LayerNorm; the checkpoints of the SynthRef recipes were trained with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from simvg.models.derived_weights import (
    DerivedWeights,
    hooked,
    inference_only,
    parameter_groups,
    parameters_at,
    transposed,
)


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
        if inference_only(self) and not hooked(self):
            constants = self._inference_constants()
            if constants is not None:
                return self._inference_forward(text, text_mask, constants)
        queries = self.query_embed.weight[None]
        # nn.TransformerDecoderLayer's own forward (post-norm, ReLU), written out: at batch 1
        # its per-call checks cost more than the arithmetic of a one-query decoder.
        out = queries.expand(text.shape[0], -1, -1)
        for layer in self.decoder.layers:
            out = layer.norm1(out + layer.dropout1(attend(layer.self_attn, out, out)))
            out = layer.norm2(out + layer.dropout2(attend(layer.multihead_attn, out, text, text_mask)))
            out = layer.norm3(out + layer.dropout3(layer.linear2(layer.dropout(F.relu(layer.linear1(out))))))
        return out + masked_max_pool(text, text_mask)[:, None] + queries

    def _inference_forward(self, text: torch.Tensor, text_mask: torch.Tensor, constants: dict) -> torch.Tensor:
        """forward() without dropout or autograd, from :meth:`_inference_constants`: every
        layer's cross-attention keys and values in one matrix product, the first layer's
        self-attention block and cross-attention queries read from the constants."""
        batch, length, dim = text.shape
        layers = self.decoder.layers
        heads = layers[0].multihead_attn.num_heads
        # (layers, 2, B, heads, L, head_dim): each layer's keys and values of the text.
        memory = F.linear(text, *constants["memory"]).view(batch, length, len(layers), 2, heads, -1)
        memory = memory.permute(2, 3, 0, 4, 1, 5)
        mask = text_mask[:, None, None, :]
        queries = self.query_embed.weight[None]
        out = constants["after_self"].expand(batch, -1, -1)
        q = constants["cross_queries"].expand(batch, -1, -1, -1)
        for index, (layer, maps) in enumerate(zip(layers, constants["layers"])):
            if index > 0:
                if "self" in maps:
                    self_out = _affine(out, *maps["self"])
                else:
                    self_out = attend(layer.self_attn, out, out)
                out = _layer_norm(layer.norm1, out + self_out)
                q = _affine(out, *maps["query"]).view(batch, out.shape[1], heads, -1).transpose(1, 2)
            attended = F.scaled_dot_product_attention(q, memory[index, 0], memory[index, 1], attn_mask=mask)
            out = _layer_norm(layer.norm2, out + _affine(attended.transpose(1, 2).reshape(batch, -1, dim), *maps["out"]))
            hidden = F.relu(_affine(out, *maps["linear1"]))
            out = _layer_norm(layer.norm3, out + _affine(hidden, *maps["linear2"]))
        return out + masked_max_pool(text, text_mask)[:, None] + queries

    def _inference_constants(self) -> dict | None:
        """What inference needs that depends on the weights alone, kept between calls: the
        first layer's self-attention block (its input is the fixed query embedding) and its
        cross-attention queries, every layer's key and value maps stacked, each later layer's
        self-attention folded into one linear map (single query only), and the one-row
        products' weights stored (in, out). None if it cannot be kept (see DerivedWeights)."""
        if not hasattr(self, "_derived"):
            self._derived = DerivedWeights()
        if not hasattr(self, "_constant_groups"):
            # Biases read live (not copied into the constants) need no watching.
            per_layer = ["self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
                         "self_attn.out_proj.bias", "norm1.weight", "norm1.bias", "multihead_attn.in_proj_weight",
                         "multihead_attn.in_proj_bias", "multihead_attn.out_proj.weight", "linear1.weight",
                         "linear2.weight"]  # fmt: skip
            names = ["query_embed.weight"] + [f"decoder.layers.{i}.{name}" for i in range(len(self.decoder.layers))
                                              for name in per_layer]  # fmt: skip
            self._constant_groups = parameter_groups(names)
        params = parameters_at(self, self._constant_groups)
        return self._derived.get("constants", params, self._build_constants)

    def _build_constants(self) -> dict:
        layers = self.decoder.layers
        first = layers[0]
        queries = self.query_embed.weight[None]
        dim = queries.shape[-1]
        after_self = first.norm1(queries + attend(first.self_attn, queries, queries))
        per_layer = []
        for index, layer in enumerate(layers):
            cross = layer.multihead_attn
            maps = {"out": (transposed(cross.out_proj.weight), cross.out_proj.bias),
                    "linear1": (transposed(layer.linear1.weight), layer.linear1.bias),
                    "linear2": (transposed(layer.linear2.weight), layer.linear2.bias)}  # fmt: skip
            if index > 0:
                maps["query"] = (transposed(cross.in_proj_weight[:dim]), cross.in_proj_bias[:dim])
                if queries.shape[1] == 1:
                    weight, bias = folded_self_attention(layer.self_attn)
                    maps["self"] = (transposed(weight), bias)
            per_layer.append(maps)
        memory = [(layer.multihead_attn.in_proj_weight[dim:], layer.multihead_attn.in_proj_bias[dim:]) for layer in layers]
        return {"after_self": after_self, "cross_queries": project_queries(first.multihead_attn, after_self),
                "layers": per_layer, "memory": (torch.cat([w for w, _ in memory]), torch.cat([b for _, b in memory]))}  # fmt: skip


def _affine(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x (..., in) @ weight_t (in, out) + bias -> (..., out) (weight_t from :func:`transposed`)."""
    return torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight_t).view(*x.shape[:-1], -1)


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
