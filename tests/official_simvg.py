"""SimVG's released-checkpoint layout, for tests: every weight its model saves, with its shape
and the official module that holds it, and its head's forward pass written out over those
weights (sequence-first, in its code's order), to check our import and our head against.

From github Dmmm1997/SimVG (commit 29df6a4): the model ``MIXDETRMB``
(simvg/models/det_seg/mix_detr_mb.py) holds ``vis_enc`` (simvg/models/vis_encs/beit/beit3.py:
torchscale's ``BEiT3`` as ``vis_enc.beit3``) and ``head``
(simvg/models/heads/tgqs_kd_detr_head/tgqs_kd_detr_head.py, whose decoders are detrex's
``DetrTransformerDecoder`` of ``BaseTransformerLayer``: attentions[0] self-attention,
attentions[1] cross-attention, each detrex ``MultiheadAttention`` wrapping an
``nn.MultiheadAttention`` as ``.attn``; ffns[0] an ``FFN`` whose ``layers`` are
Sequential(Sequential(Linear, ReLU, Dropout), Linear, Dropout); norms[0..2]).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Layout = dict[str, tuple[tuple[int, ...], str]]  # key -> (shape, the official module holding it)


def official_beit3_layout(width: int, layers: int, ffn: int, vocab: int, patch: int, image: int) -> Layout:
    """torchscale 0.3.0 ``BEiT3`` (multiway: A = vision, B = text) as ``vis_enc.beit3``."""
    b = "vis_enc.beit3."
    grid = (image // patch) ** 2
    keys: Layout = {
        f"{b}text_embed.weight": ((vocab, width), "TextEmbedding (nn.Embedding)"),
        f"{b}vision_embed.mask_token": ((1, 1, width), "VisionEmbedding.mask_token"),
        f"{b}vision_embed.cls_token": ((1, 1, width), "VisionEmbedding.cls_token"),
        f"{b}vision_embed.proj.weight": ((width, 3, patch, patch), "VisionEmbedding.proj (Conv2d)"),
        f"{b}vision_embed.proj.bias": ((width,), "VisionEmbedding.proj (Conv2d)"),
        # fairseq-style: 2 offset rows + the CLS token + the patches
        f"{b}encoder.embed_positions.A.weight": ((grid + 3, width), "MultiwayNetwork(PositionalEmbedding).A"),
        f"{b}encoder.embed_positions.B.weight": ((1024, width), "MultiwayNetwork(PositionalEmbedding).B"),
    }
    for i in range(layers):
        layer = f"{b}encoder.layers.{i}."
        for way in "AB":
            for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
                keys[f"{layer}self_attn.{proj}.{way}.weight"] = ((width, width), f"MultiheadAttention.{proj}.{way}")
                keys[f"{layer}self_attn.{proj}.{way}.bias"] = ((width,), f"MultiheadAttention.{proj}.{way}")
            norms = {"self_attn.inner_attn_ln": width, "self_attn_layer_norm": width, "final_layer_norm": width}
            for name, size in norms.items():
                for p in ("weight", "bias"):
                    keys[f"{layer}{name}.{way}.{p}"] = ((size,), f"LayerNorm {name}.{way}")
            for name, shape in {"fc1.weight": (ffn, width), "fc1.bias": (ffn,), "fc2.weight": (width, ffn),
                                "fc2.bias": (width,), "ffn_layernorm.weight": (ffn,), "ffn_layernorm.bias": (ffn,)}.items():  # fmt: skip
                keys[f"{layer}ffn.{way}.{name}"] = (shape, f"FeedForwardNetwork.{name.split('.')[0]} ({way})")
    for way in "AB":
        for p in ("weight", "bias"):
            keys[f"{b}encoder.layer_norm.{way}.{p}"] = ((width,), f"Encoder.layer_norm.{way} (normalize_output)")
    return keys


def _detr_layers(prefix: str, dim: int, layers: int, ffn: int, module: str) -> Layout:
    keys: Layout = {}
    for i in range(layers):
        p = f"{prefix}.layers.{i}."
        for a, kind in ((0, "self"), (1, "cross")):
            att = f"{module}.layers[{i}].attentions[{a}] ({kind}-attention, nn.MultiheadAttention)"
            keys[f"{p}attentions.{a}.attn.in_proj_weight"] = ((3 * dim, dim), att)
            keys[f"{p}attentions.{a}.attn.in_proj_bias"] = ((3 * dim,), att)
            keys[f"{p}attentions.{a}.attn.out_proj.weight"] = ((dim, dim), att)
            keys[f"{p}attentions.{a}.attn.out_proj.bias"] = ((dim,), att)
        keys[f"{p}ffns.0.layers.0.0.weight"] = ((ffn, dim), f"{module}.layers[{i}].ffns[0] first Linear")
        keys[f"{p}ffns.0.layers.0.0.bias"] = ((ffn,), f"{module}.layers[{i}].ffns[0] first Linear")
        keys[f"{p}ffns.0.layers.1.weight"] = ((dim, ffn), f"{module}.layers[{i}].ffns[0] second Linear")
        keys[f"{p}ffns.0.layers.1.bias"] = ((dim,), f"{module}.layers[{i}].ffns[0] second Linear")
        for n in range(3):
            keys[f"{p}norms.{n}.weight"] = ((dim,), f"{module}.layers[{i}].norms[{n}] (LayerNorm)")
            keys[f"{p}norms.{n}.bias"] = ((dim,), f"{module}.layers[{i}].norms[{n}] (LayerNorm)")
    keys[f"{prefix}.post_norm_layer.weight"] = ((dim,), f"{module}.post_norm_layer (LayerNorm)")
    keys[f"{prefix}.post_norm_layer.bias"] = ((dim,), f"{module}.post_norm_layer (LayerNorm)")
    return keys


def official_head_layout(width: int, dim: int = 256, queries: int = 1, tqg_layers: int = 2, tqg_ffn: int = 512,
                         decoder_layers: int = 3, decoder_ffn: int = 2048) -> Layout:  # fmt: skip
    """``TextGuidedQuerySelectKDDETRHead`` as ``head`` (only_decoder=True, num_token_mlp_layers=1,
    text_guided_query_generation=True, distill_type "hard_weighted", as every released config)."""
    keys: Layout = {
        "head.input_proj.weight": ((dim, width, 1, 1), "input_proj (Conv2d 1x1)"),
        "head.input_proj.bias": ((dim,), "input_proj (Conv2d 1x1)"),
        "head.input_text_proj.weight": ((dim, width), "input_text_proj (Linear)"),
        "head.input_text_proj.bias": ((dim,), "input_text_proj (Linear)"),
        "head.input_cls_proj.weight": ((dim, width), "input_cls_proj (Linear)"),
        "head.input_cls_proj.bias": ((dim,), "input_cls_proj (Linear)"),
        "head.query_embed.weight": ((queries, dim), "query_embed (Embedding)"),
        "head.mlp.layers.0.weight": ((dim, dim), "mlp (MLP, 1 layer)"),
        "head.mlp.layers.0.bias": ((dim,), "mlp (MLP, 1 layer)"),
        "head.criterion.empty_weight": ((2,), "criterion (SetCriterion buffer)"),
        "head.criterion_harddistill.empty_weight": ((2,), "criterion_harddistill (SetCriterion buffer)"),
    }
    for branch in ("decoder", "token"):
        keys[f"head.class_embed_{branch}.weight"] = ((2, dim), f"class_embed_{branch} (Linear)")
        keys[f"head.class_embed_{branch}.bias"] = ((2,), f"class_embed_{branch} (Linear)")
        for i, out in enumerate((dim, dim, 4)):
            keys[f"head.bbox_embed_{branch}.layers.{i}.weight"] = ((out, dim), f"bbox_embed_{branch} (MLP)")
            keys[f"head.bbox_embed_{branch}.layers.{i}.bias"] = ((out,), f"bbox_embed_{branch} (MLP)")
    keys |= _detr_layers("head.text_guided_query_generation_transformer", dim, tqg_layers, tqg_ffn,
                         "text_guided_query_generation_transformer")  # fmt: skip
    keys |= _detr_layers("head.transformer.decoder", dim, decoder_layers, decoder_ffn, "transformer.decoder")
    return keys


def random_state(layout: Layout, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of the layout's shapes: LayerNorm weights near 1, the rest small."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, (shape, module) in layout.items():
        value = torch.randn(shape, generator=generator) * 0.2
        if "LayerNorm" in module and key.endswith("weight"):
            value = value + 1.0
        state[key] = value
    state["head.criterion.empty_weight"] = state["head.criterion_harddistill.empty_weight"] = torch.tensor([1.0, 0.1])
    return state


def official_text_positions(length: int, dim: int) -> torch.Tensor:
    """``PositionEmbeddingSine1D.forward`` of SimVG's heads/utils.py, step by step."""
    position_emb = torch.zeros(length, dim, dtype=torch.float)
    i_matrix = torch.arange(dim // 2, dtype=torch.float)
    i_matrix /= dim / 2
    i_matrix = torch.pow(10000, i_matrix)
    i_matrix = 1 / i_matrix
    i_matrix = i_matrix.to(torch.long)
    pos_vec = torch.arange(length).to(torch.long)
    out = pos_vec[:, None] @ i_matrix[None, :]
    position_emb[:, 0::2] = torch.sin(out)
    position_emb[:, 1::2] = torch.cos(out)
    return position_emb


def official_image_positions(pad_mask: torch.Tensor, dim: int) -> torch.Tensor:
    """detrex ``PositionEmbeddingSine(num_pos_feats=dim // 2, normalize=True)``: pad_mask (B, h,
    w) True = padding -> (B, dim, h, w)."""
    feats = dim // 2
    not_mask = ~pad_mask
    y_embed = not_mask.cumsum(1, dtype=torch.float32)
    x_embed = not_mask.cumsum(2, dtype=torch.float32)
    y_embed = y_embed / (y_embed[:, -1:, :] + 1e-6) * 2 * math.pi
    x_embed = x_embed / (x_embed[:, :, -1:] + 1e-6) * 2 * math.pi
    dim_t = torch.arange(feats, dtype=torch.float32)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / feats)
    pos_x = x_embed[:, :, :, None] / dim_t
    pos_y = y_embed[:, :, :, None] / dim_t
    b, h, w = pad_mask.shape
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).view(b, h, w, -1)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).view(b, h, w, -1)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def _attention(state: dict, prefix: str, query, key, value, heads: int, key_padding_mask=None):
    dim = query.shape[-1]
    return F.multi_head_attention_forward(
        query, key, value, dim, heads, state[f"{prefix}.in_proj_weight"], state[f"{prefix}.in_proj_bias"],
        None, None, False, 0.0, state[f"{prefix}.out_proj.weight"], state[f"{prefix}.out_proj.bias"],
        training=False, key_padding_mask=key_padding_mask, need_weights=False,
    )[0]


def _norm(state: dict, prefix: str, x):
    return F.layer_norm(x, x.shape[-1:], state[f"{prefix}.weight"], state[f"{prefix}.bias"])


def _detr_decoder(state: dict, prefix: str, query, key, query_pos, key_pos, key_padding_mask, heads: int) -> list:
    """detrex DetrTransformerDecoder(post_norm=True) with BaseTransformerLayer's operation order
    (self_attn, norm, cross_attn, norm, ffn, norm); every layer's output through post_norm_layer."""
    layers = len({k.split(".")[len(prefix.split("."))+1] for k in state if k.startswith(f"{prefix}.layers.")})
    outputs = []
    for i in range(layers):
        p = f"{prefix}.layers.{i}"
        identity = query
        q = query + query_pos
        query = identity + _attention(state, f"{p}.attentions.0.attn", q, q, query, heads)
        query = _norm(state, f"{p}.norms.0", query)
        query = query + _attention(state, f"{p}.attentions.1.attn", query + query_pos, key + key_pos, key, heads,
                                   key_padding_mask)  # fmt: skip
        query = _norm(state, f"{p}.norms.1", query)
        hidden = F.relu(F.linear(query, state[f"{p}.ffns.0.layers.0.0.weight"], state[f"{p}.ffns.0.layers.0.0.bias"]))
        query = query + F.linear(hidden, state[f"{p}.ffns.0.layers.1.weight"], state[f"{p}.ffns.0.layers.1.bias"])
        query = _norm(state, f"{p}.norms.2", query)
        outputs.append(_norm(state, f"{prefix}.post_norm_layer", query))
    return outputs


def _mlp(state: dict, prefix: str, x):
    count = len({k for k in state if k.startswith(f"{prefix}.layers.") and k.endswith(".weight")})
    for i in range(count):
        x = F.linear(x, state[f"{prefix}.layers.{i}.weight"], state[f"{prefix}.layers.{i}.bias"])
        x = F.relu(x) if i < count - 1 else x
    return x


@torch.no_grad()
def official_head_forward(state: dict, img_feat, cls_feat, text_feat, text_pad, img_pad=None) -> dict:
    """``forward_general`` of SimVG's head in eval mode over its own weights ``state``.

    img_feat (B, C, h, w), cls_feat (B, C), text_feat (B, L, C), text_pad (B, L) True =
    padding, img_pad (B, h, w) True = padding (None: none) -> {"token": (logits (B, Q, 2),
    boxes (B, Q, 4)), "decoder": [(logits, boxes) per layer]}.
    """
    heads = 8
    x = F.conv2d(img_feat, state["head.input_proj.weight"], state["head.input_proj.bias"])
    text = F.linear(text_feat, state["head.input_text_proj.weight"], state["head.input_text_proj.bias"])
    cls = F.linear(cls_feat, state["head.input_cls_proj.weight"], state["head.input_cls_proj.bias"])[:, None]
    b, dim, h, w = x.shape
    queries = state["head.query_embed.weight"].shape[0]
    img_pad = torch.zeros(b, h, w, dtype=torch.bool) if img_pad is None else img_pad
    pos = official_image_positions(img_pad, dim)
    cls = cls.repeat(1, queries, 1)
    pooled = torch.cat([t[~m].max(dim=0, keepdim=True)[0] for t, m in zip(text, text_pad)])[:, None].repeat(1, queries, 1)
    query_embed = state["head.query_embed.weight"][None].repeat(b, 1, 1).transpose(0, 1)  # (Q, B, D)
    text_pos = official_text_positions(text.shape[1], dim)[None].repeat(b, 1, 1).permute(1, 0, 2)
    text_in = text.transpose(0, 1)
    generated = _detr_decoder(state, "head.text_guided_query_generation_transformer", torch.zeros_like(query_embed),
                              text_in, query_embed, text_pos, text_pad, heads)[-1]  # fmt: skip
    query = generated.transpose(0, 1) + pooled + query_embed.transpose(0, 1)
    token = F.linear(query + cls, state["head.mlp.layers.0.weight"], state["head.mlp.layers.0.bias"])
    token_out = (F.linear(token, state["head.class_embed_token.weight"], state["head.class_embed_token.bias"]),
                 _mlp(state, "head.bbox_embed_token", token).sigmoid())  # fmt: skip
    memory = x.view(b, dim, -1).permute(2, 0, 1)
    memory_pos = pos.view(b, dim, -1).permute(2, 0, 1)
    query_pos = query.transpose(0, 1)
    hidden = _detr_decoder(state, "head.transformer.decoder", torch.zeros_like(query_pos), memory, query_pos,
                           memory_pos, img_pad.view(b, -1), heads)  # fmt: skip
    decoder = [(F.linear(hs.transpose(0, 1), state["head.class_embed_decoder.weight"], state["head.class_embed_decoder.bias"]),
                _mlp(state, "head.bbox_embed_decoder", hs.transpose(0, 1)).sigmoid()) for hs in hidden]  # fmt: skip
    return {"token": token_out, "decoder": decoder}
