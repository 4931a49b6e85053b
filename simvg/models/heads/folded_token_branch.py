"""The "cells" head's token-branch inference (ours) with the linear maps around it folded together.

At inference the token branch answers with the box of one cell. Between the encoder's
outputs and that answer, every map is linear except the softmax, the argmax and the box
MLP's ReLUs, so products of weight matrices stand in for chains of them:

- the attention logits over the visual tokens are ``raw . u + c``, with ``u`` and ``c``
  linear in the object token: the visual tokens are neither projected to the head's width
  nor turned into keys;
- the 2-way score reads the attention-pooled raw visual tokens and the object token
  directly (``class_head . (proj + value . visual_proj)``);
- the box MLP's first layer reads the answer cell's raw visual token, its stem detail and
  the object token directly (``layer0 . (visual_proj + detail_proj + condition)``);
- with a landmark relation, the landmark pointer's logits fold like the attention logits,
  and its coefficients are one more linear map of the object token; a "words" pointer's
  query is read from the phrase as in training, and its keys fold into ``pointer_map``.

The results equal :class:`~simvg.models.heads.token_branch.TokenBranch`'s after the
model's ``visual_proj`` and ``detail_proj`` up to float rounding (tests compare both);
at batch 1 the head runs fewer kernels and reads fewer weight bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from simvg.models.derived_weights import transposed
from simvg.models.heads.cell_detail import gather_cell_detail
from simvg.models.heads.landmark_relation import (
    RELATION_FEATURES,
    Words,
    relate_plausible,
    relation_bias,
)
from simvg.models.heads.token_branch import TokenBranch, cell_boxes_from_deltas, gather_cells


@dataclass
class FoldedTokenBranch:
    """Weights of a token branch folded with the model's visual and detail projections.

    Matrices are stored (in, out), for ``x @ M``:
    token_map: (D, 2 + H + W + 1 [+ W + 1] [+ F]) with token_bias: the object token's share of
      the class logits, of the box MLP's first layer (H units), ``u`` (W, the visual width) and
      ``c`` [, the "token" landmark pointer's ``u`` and ``c``] [, the F relation coefficients,
      when ``relation``];
    pooled_to_class: (W, 2) the attention-pooled raw visual token's share of the class logits;
    cell_visual: (W, H) and cell_detail: (4C, H) or None, the answer cell's raw visual token's
      and stem detail's share of the box MLP's first layer;
    box_layers: the box MLP's later layers as (weight (in, out), bias) pairs; scale: the
      attention's 1 / sqrt(D);
    relation: None, "token" or "words" (the landmark pointer's kind); for "words",
      landmark_query reads the (B, D) query from the phrase's :data:`Words` and pointer_map
      (D, W + 1) turns it into the pointer's ``u`` and ``c``.
    """

    token_map: torch.Tensor
    token_bias: torch.Tensor
    pooled_to_class: torch.Tensor
    cell_visual: torch.Tensor
    cell_detail: torch.Tensor | None
    box_layers: list[tuple[torch.Tensor, torch.Tensor]]
    scale: float
    relation: str | None = None
    landmark_query: Callable[[Words], torch.Tensor] | None = None
    pointer_map: torch.Tensor | None = None

    def __call__(
        self,
        token: torch.Tensor,
        visual: torch.Tensor,
        visual_mask: torch.Tensor,
        grid: tuple[int, int],
        stem_detail: torch.Tensor | None,
        words: Words | None = None,
    ) -> dict[str, torch.Tensor]:
        """token (B, D) object token, visual (B, N, W) the encoder's visual tokens (before the
        model's visual_proj), visual_mask (B, N) bool, stem_detail (B, C, 2h, 2w) the stem map
        the detail comes from (None without one), words (a "words" pointer's input) ->
        {"logits": (B, 2), "boxes": (B, 4) normalised cxcywh, "ref_logits": (B, N)
        [, "landmark_logits", "content_logits": (B, N)]}."""
        hidden, width = self.cell_visual.shape[1], visual.shape[-1]
        sizes = [2, hidden, width, 1] + ([width, 1] if self.relation == "token" else [])
        sizes += [RELATION_FEATURES] if self.relation else []
        class_part, first, u, c, *relation = torch.addmm(self.token_bias, token, self.token_map).split(sizes, dim=-1)
        logits = self._attention_logits(visual, visual_mask, u, c)
        extra = {}
        if relation:
            if self.relation == "words":
                if words is None:
                    raise ValueError("this folded token branch's landmark pointer reads the phrase's words; pass them")
                (coefficients,) = relation
                query = self.landmark_query(words).to(self.pointer_map.dtype)
                landmark_u, landmark_c = (query @ self.pointer_map).split([width, 1], dim=-1)
            else:
                landmark_u, landmark_c, coefficients = relation
            landmark_logits = self._attention_logits(visual, visual_mask, landmark_u, landmark_c)
            bias = relation_bias(coefficients.float(), landmark_logits.softmax(dim=-1), grid)
            content_logits = logits
            logits = relate_plausible(logits, bias)
            extra = {"landmark_logits": landmark_logits, "content_logits": content_logits}
        pooled = torch.bmm(logits.softmax(dim=-1).to(visual.dtype)[:, None], visual)[:, 0]
        class_logits = torch.addmm(class_part, pooled, self.pooled_to_class)
        peak = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
        x = torch.addmm(first, gather_cells(visual, peak)[:, 0], self.cell_visual)
        if self.cell_detail is not None:
            if stem_detail is None:
                raise ValueError("this folded token branch reads stem detail; pass the stem map")
            x = torch.addmm(x, gather_cell_detail(stem_detail, grid, peak)[:, 0], self.cell_detail)
        for weight, bias in self.box_layers:
            x = torch.addmm(bias, torch.relu(x), weight)
        box = cell_boxes_from_deltas(x[:, None].float(), grid, peak)
        return {"logits": class_logits, "boxes": box[:, 0], "ref_logits": logits} | extra

    def _attention_logits(
        self, visual: torch.Tensor, visual_mask: torch.Tensor, u: torch.Tensor, c: torch.Tensor
    ) -> torch.Tensor:
        logits = torch.baddbmm(c[:, :, None], visual, u[:, :, None], alpha=self.scale, beta=self.scale)[..., 0]
        return logits.float().masked_fill(~visual_mask, torch.finfo(torch.float32).min)


def folded_parameter_names(branch: str, box_layers: int, detail: bool, relation: str | None = None) -> list[str]:
    """What :func:`fold_token_branch` reads, named in a model holding the branch at
    ``branch`` (a dotted module path), its ``visual_proj`` and (``detail``) ``detail_proj``;
    ``relation``: the kind of the branch's landmark pointer ("token" or "words"; None without
    a landmark relation)."""
    linears = [f"{branch}.{name}" for name in ("proj", "query", "key", "value", "condition", "class_head")]
    if relation is not None:
        pointer = "query" if relation == "token" else "pointer.key"
        linears += [f"{branch}.landmark_relation.{pointer}", f"{branch}.landmark_relation.coefficients"]
    linears += [f"{branch}.box_head.layers.{i}" for i in range(box_layers)]
    linears += ["visual_proj"] + (["detail_proj"] if detail else [])
    names = [f"{linear}.{name}" for linear in linears for name in ("weight", "bias")]
    biasless = {f"{branch}.key.bias", f"{branch}.landmark_relation.pointer.key.bias"}
    return [name for name in names if name not in biasless]


def fold_token_branch(branch: TokenBranch, visual_proj: nn.Linear, detail_proj: nn.Linear | None) -> FoldedTokenBranch:
    """Fold ``branch`` (reference window 1) with the model's ``visual_proj`` (encoder width W
    -> D) and ``detail_proj`` (4C -> D, or None). Products are taken in float64."""
    dtype = branch.proj.weight.dtype

    def f64(linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
        bias = linear.weight.new_zeros(linear.out_features) if linear.bias is None else linear.bias
        return linear.weight.double(), bias.double()

    (w_p, b_p), (w_q, b_q), (w_k, b_k) = f64(branch.proj), f64(branch.query), f64(branch.key)
    (w_val, b_val), (w_cond, b_cond), (w_c, b_c) = f64(branch.value), f64(branch.condition), f64(branch.class_head)
    (w_vp, b_vp), (w_1, b_1) = f64(visual_proj), f64(branch.box_head.layers[0])
    # key(visual_proj(r)) . query(t) = r . (W_vp^T W_k^T query(t)) + query(t) . (W_k b_vp + b_k)
    key_bias = w_k @ b_vp + b_k
    u_map, u_bias = w_vp.T @ w_k.T @ w_q, w_vp.T @ w_k.T @ b_q
    # The attention sums to 1: value(visual_proj(pooled raw)) carries the biases once.
    class_bias = w_c @ (b_p + w_val @ b_vp + b_val) + b_c
    first_bias = w_1 @ (b_vp + b_cond) + b_1
    cell_detail = None
    if detail_proj is not None:
        w_dp, b_dp = f64(detail_proj)
        first_bias = first_bias + w_1 @ b_dp
        cell_detail = transposed(w_1 @ w_dp, dtype)
    token_map = [w_c @ w_p, w_1 @ w_cond, u_map, (w_q.T @ key_bias)[None]]
    token_bias = [class_bias, first_bias, u_bias, (key_bias @ b_q)[None]]
    relation = branch.landmark_relation
    kind, pointer_map = None, None
    if relation is not None and relation.pointer is None:  # the landmark pointer: a second query over the same keys
        kind = "token"
        (w_lq, b_lq), (w_rc, b_rc) = f64(relation.query), f64(relation.coefficients)
        token_map += [w_vp.T @ w_k.T @ w_lq, (w_lq.T @ key_bias)[None], w_rc]
        token_bias += [w_vp.T @ w_k.T @ b_lq, (key_bias @ b_lq)[None], b_rc]
    elif relation is not None:  # a query read from the words, over keys of its own
        kind = "words"
        (w_pk, b_pk), (w_rc, b_rc) = f64(relation.pointer.key), f64(relation.coefficients)
        token_map, token_bias = token_map + [w_rc], token_bias + [b_rc]
        # key(visual_proj(r)) . q = r . (W_vp^T W_pk^T q) + q . (W_pk b_vp + b_pk)
        pointer_map = transposed(torch.cat([w_vp.T @ w_pk.T, (w_pk @ b_vp + b_pk)[None]]), dtype)
    return FoldedTokenBranch(
        token_map=transposed(torch.cat(token_map), dtype),
        token_bias=torch.cat(token_bias).to(dtype),
        pooled_to_class=transposed(w_c @ w_val @ w_vp, dtype),
        cell_visual=transposed(w_1 @ w_vp, dtype),
        cell_detail=cell_detail,
        box_layers=[(transposed(layer.weight, dtype), layer.bias) for layer in branch.box_head.layers[1:]],
        scale=branch.scale,
        relation=kind,
        landmark_query=relation.pointer.landmark_query if kind == "words" else None,
        pointer_map=pointer_map,
    )
