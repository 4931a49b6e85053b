"""SimVG: a single-stream encoder does all image-text fusion; a tiny head localises."""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from simvg.config import ModelConfig
from simvg.models.derived_weights import (
    DerivedWeights,
    hooked,
    inference_only,
    parameter_groups,
    parameters_at,
)
from simvg.models.encoders import build_encoder
from simvg.models.encoders.base import EncoderOutput
from simvg.models.heads import DecoderBranch, TextGuidedQueryGenerator, TokenBranch
from simvg.models.heads.cell_detail import cell_detail, gather_cell_detail
from simvg.models.heads.folded_token_branch import (
    FoldedTokenBranch,
    fold_token_branch,
    folded_parameter_names,
)
from simvg.models.heads.position_encoding import sine_position_encoding
from simvg.models.heads.simvg_head import SimVGHead
from simvg.models.heads.token_branch import MultiBranchTokenHead

__all__ = ["SimVG", "build_model", "cell_detail", "ProjectedCellDetail"]


class ProjectedCellDetail:
    """A :data:`~simvg.models.heads.token_branch.Detail`: ``project`` applied to
    :func:`cell_detail` of ``features``, for every cell (computed once, shared by the ONE
    branches) or for the cells asked for only (inference projects just the answer's cell)."""

    def __init__(self, features: torch.Tensor, grid: tuple[int, int], project: nn.Module):
        self.features = features
        self.grid = grid
        self.project = project
        self._every_cell: torch.Tensor | None = None

    def __call__(self, cells: torch.Tensor | None = None) -> torch.Tensor:
        """cells: (B, K) token indices, or None for every cell -> (B, K or N, D)."""
        if cells is not None:
            return self.project(gather_cell_detail(self.features, self.grid, cells))
        if self._every_cell is None:
            self._every_cell = self.project(cell_detail(self.features, self.grid))
        return self._every_cell


@lru_cache(maxsize=16)
def _cached_position_encoding(grid: tuple[int, int], dim: int) -> torch.Tensor:
    return sine_position_encoding(grid, dim)


class SimVG(nn.Module):
    """The grounding model.

    forward(images (B, 3, S, S) uint8, pixel_mask (B, S, S) bool, input_ids (B, L),
    text_mask (B, L) bool; use_decoder, all_cells optional) returns a dict:
      "token": {"logits": (B, 2), "boxes": (B, 4), "ref_logits": (B, N)} (+ "cell_boxes"
        (B, N, 4) in training or with all_cells=True; + "branches", "gate" with ONE heads);
        with head.num_queries > 1 every cell answers: "logits" (B, N, 2), "boxes" (B, N, 4),
      "decoder": {"logits": (B, Q, 2), "boxes": (B, Q, 4), "aux": [...]} when the decoder
        branch runs,
      "object_token": (B, D) the fused token the token branch reads,
      "visual_tokens": (B, N, W) the encoder's fused visual tokens, "visual_mask": (B, N) bool,
      "visual_content": (B, N, W) the visual tokens before fusion (hybrid encoder only).
    Boxes are normalised cx, cy, w, h in the letterbox frame; class 0 = object.

    With ``model.head.type: simvg`` the head is SimVG's (:class:`SimVGHead`, weights under
    ``head.``) and the outputs are those its docstring lists; the rest of this class (the
    modules below, ONE branches, folding) is the "cells" head's.
    """

    def __init__(self, config: ModelConfig, vocab_size: int, backbone_config: dict | None = None):
        super().__init__()
        self.config = config
        head = config.head
        self.encoder = build_encoder(config, vocab_size, backbone_config)
        width = self.encoder.hidden_size
        if head.type == "simvg":
            self.head = SimVGHead(width, head)
            return
        dim = head.hidden_dim
        self.object_proj = nn.Linear(width, dim)
        self.text_proj = nn.Linear(width, dim)
        self.query_generator = TextGuidedQueryGenerator(
            dim, head.num_queries, head.tqg_layers, head.tqg_heads, head.tqg_ffn, head.dropout
        )
        # Several queries: phrases may name several objects or none, so every cell answers.
        cell_scores = head.num_queries > 1
        if head.token_branches > 1:
            self.token_head: nn.Module = MultiBranchTokenHead(
                dim, head.token_branches, head.box_mlp_layers, head.deploy_branch, head.reference_window,
                head.landmark_relation, head.landmark_pointer, width, cell_scores, head.presence_trains_encoder,
                head.presence_geometry,
            )  # fmt: skip
        else:
            self.token_head = TokenBranch(dim, head.box_mlp_layers, head.reference_window, head.landmark_relation,
                                          head.landmark_pointer, width, cell_scores,
                                          head.presence_trains_encoder, head.presence_geometry)  # fmt: skip
        self.visual_proj = nn.Linear(width, dim)
        # Finer stem features (one stage before the token grid) give the token branch's
        # per-cell boxes the detail that small objects need; only the hybrid has a stem.
        stem = getattr(self.encoder, "stem", None)
        self.detail_proj = nn.Linear(4 * stem.channels[-2], dim) if stem is not None and len(stem.channels) > 1 else None
        self.decoder_branch = None
        if head.use_decoder:
            self.decoder_branch = DecoderBranch(
                dim, head.decoder_layers, head.decoder_heads, head.decoder_ffn, head.dropout, head.box_mlp_layers
            )

    def keep_token_branch(self, index: int) -> None:
        """Replace a ONE multi-branch token head by its branch ``index`` (a plain token
        branch), dropping the other branches and the gate; ``self.config`` is updated so the
        model saves and reloads as a single-branch one. Outputs of that branch are unchanged."""
        if not isinstance(getattr(self, "token_head", None), MultiBranchTokenHead):
            raise ValueError("this model's token head has a single branch; there is nothing to drop")
        branches = self.token_head.one.branches
        if not 0 <= index < len(branches):
            raise ValueError(f"token branch {index} out of range: the head has {len(branches)} branches")
        self.token_head = branches[index]
        self.config.head.token_branches = 1
        self.config.head.deploy_branch = None

    def keep_deployed_branch(self) -> None:
        """Keep only the branch a ONE head deploys (``head.deploy_branch``), as the model runs
        at inference; a model without one is left as it is."""
        token_head = getattr(self, "token_head", None)
        if isinstance(token_head, MultiBranchTokenHead) and token_head.deploy_branch is not None:
            self.keep_token_branch(self.token_head.deploy_branch)

    def forward(
        self,
        images: torch.Tensor,
        pixel_mask: torch.Tensor,
        input_ids: torch.Tensor,
        text_mask: torch.Tensor,
        use_decoder: bool | None = None,
        all_cells: bool | None = None,
    ) -> dict:
        encoded = self.encoder(images, pixel_mask, input_ids, text_mask)
        return self.heads(encoded, use_decoder, all_cells)

    def heads(self, encoded: EncoderOutput, use_decoder: bool | None = None, all_cells: bool | None = None) -> dict:
        """Everything after the encoder: forward()'s result from the encoder's outputs."""
        if self.config.head.type == "simvg":
            return self.head(encoded, use_decoder)
        text = self.text_proj(encoded.text_tokens)
        queries = self.query_generator(text, encoded.text_mask)
        object_token = self.object_proj(encoded.object_token) + queries[:, 0]
        run_decoder = self.decoder_branch is not None if use_decoder is None else use_decoder
        if run_decoder and self.decoder_branch is None:
            raise ValueError("this model has no decoder branch (head.use_decoder is false); use the token branch")
        visual = None
        words = (encoded.text_embeddings, encoded.text_mask) if encoded.text_embeddings is not None else None
        folded = self._folded_token_branch(all_cells)
        if folded is not None:
            stem_detail = encoded.stem_features[-2] if self.detail_proj is not None else None
            token = folded(object_token, encoded.visual_tokens, encoded.visual_mask, encoded.grid, stem_detail, words)
            if isinstance(self.token_head, MultiBranchTokenHead):
                token = {**token, "branches": [token], "gate": None}
        else:
            visual = self.visual_proj(encoded.visual_tokens)
            detail = None
            if self.detail_proj is not None:
                detail = ProjectedCellDetail(encoded.stem_features[-2], encoded.grid, self.detail_proj)
            token = self.token_head(object_token, visual, encoded.visual_mask, encoded.grid, detail, all_cells, words)
        out: dict = {
            "token": token,
            "object_token": object_token,
            "grid": encoded.grid,
            "visual_tokens": encoded.visual_tokens,
            "visual_mask": encoded.visual_mask,
        }
        if encoded.visual_content is not None:
            out["visual_content"] = encoded.visual_content
        if run_decoder:
            if visual is None:
                visual = self.visual_proj(encoded.visual_tokens)
            pos = _cached_position_encoding(encoded.grid, visual.shape[-1]).to(visual.device)
            out["decoder"] = self.decoder_branch(
                visual, ~encoded.visual_mask, pos, queries, encoded.grid, all_layers=self.training
            )
        return out

    def _folded_token_branch(self, all_cells: bool | None) -> FoldedTokenBranch | None:
        """The (deployed) token branch folded with ``visual_proj`` and ``detail_proj`` for
        inference (:mod:`~simvg.models.heads.folded_token_branch`), kept between calls; None
        in training, with autograd on, when every cell's box is asked for, when the answer
        reads more than the peak cell or every cell answers (cell scores), for a ONE ensemble, when the folded modules have forward
        hooks, or when the weights cannot be kept (see DerivedWeights: then the branch runs as
        it is)."""
        if all_cells or not inference_only(self):
            return None
        branch, path = self.token_head, "token_head"
        if isinstance(branch, MultiBranchTokenHead):
            if branch.deploy_branch is None:
                return None
            branch, path = branch.one.branches[branch.deploy_branch], f"{path}.one.branches.{branch.deploy_branch}"
        if branch.reference_window != 1 or branch.score_head is not None:  # several answers: every cell is read
            return None
        if hooked(self.token_head, self.visual_proj, self.detail_proj):
            return None
        if not hasattr(self, "_derived"):
            self._derived, self._fold_groups = DerivedWeights(), {}
        relation = branch.landmark_relation
        pointer = None if relation is None else "token" if relation.pointer is None else "words"
        shape = (path, len(branch.box_head.layers), self.detail_proj is not None, pointer)
        if shape not in self._fold_groups:
            self._fold_groups[shape] = parameter_groups(folded_parameter_names(*shape))
        params = parameters_at(self, self._fold_groups[shape])
        return self._derived.get("token_branch", params, lambda: fold_token_branch(branch, self.visual_proj, self.detail_proj))


def build_model(config: ModelConfig, vocab_size: int, backbone_config: dict | None = None) -> SimVG:
    """A SimVG model; pretrained encoder weights are loaded unless ``backbone_config`` is given
    (then only the structure is built, for loading a checkpoint)."""
    return SimVG(config, vocab_size, backbone_config)
