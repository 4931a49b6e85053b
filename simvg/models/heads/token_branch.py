"""The token branch: one box and a 2-way score from the (query-enriched) object token.

SimVG regresses the box from the object token with an MLP. Here the object token also acts
as one attention query over the encoder's visual tokens: the attention gives a reference
point (the expected position of the attended tokens) and a pooled feature, and the box
is predicted relative to that point. The attention logits get a direct loss (which token
holds the target's centre), so localisation is learned from far fewer samples than a
box regressed from the token alone; at inference it costs one (1 x N) attention.

At inference the reference point is the expected position within a small window around the
most attended token (a local soft-argmax), not over the whole grid: when the attention is
split between candidate objects, the global expectation lands between them, on no object.
Training keeps the global expectation, so every logit gets a gradient.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from simvg.models.heads.mlp import MLP


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


def grid_centres(grid: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
    """(h*w, 2) normalised (x, y) centres of a row-major token grid."""
    h, w = grid
    ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)


def local_soft_argmax(logits: torch.Tensor, grid: tuple[int, int], window: int) -> torch.Tensor:
    """Softmax of (B, h*w) logits restricted to the ``window`` x ``window`` tokens around
    each row's maximum (clipped at the grid's edges); (B, h*w) weights summing to 1."""
    h, w = grid
    peak = logits.argmax(dim=-1, keepdim=True)
    rows = torch.arange(h, device=logits.device).repeat_interleave(w)
    cols = torch.arange(w, device=logits.device).repeat(h)
    half = window // 2
    near = ((rows - peak // w).abs() <= half) & ((cols - peak % w).abs() <= half)
    return logits.masked_fill(~near, torch.finfo(logits.dtype).min).softmax(dim=-1)


class TokenBranch(nn.Module):
    """Object token -> {"logits": (B, 2), "boxes": (B, 4) normalised cx, cy, w, h,
    "ref_logits": (B, N) attention logits over the visual tokens}.

    forward(token (B, D), visual (B, N, D), visual_mask (B, N) bool, grid (h, w)).
    ``reference_window``: side of the token window around the attention peak that the
    reference point is computed over in eval mode (odd; 0 = the whole grid, as in training).
    """

    def __init__(self, dim: int, box_mlp_layers: int = 3, reference_window: int = 3):
        super().__init__()
        if reference_window < 0 or (reference_window and reference_window % 2 == 0):
            raise ValueError(f"model.head.reference_window must be 0 or odd, got {reference_window}")
        self.reference_window = reference_window
        self.proj = nn.Linear(dim, dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.class_head = nn.Linear(dim, 2)
        self.box_head = MLP(dim, dim, 4, box_mlp_layers)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(
        self, token: torch.Tensor, visual: torch.Tensor, visual_mask: torch.Tensor, grid: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        logits = torch.einsum("bd,bnd->bn", self.query(token), self.key(visual)) * self.scale
        logits = logits.float().masked_fill(~visual_mask, torch.finfo(torch.float32).min)
        attention = logits.softmax(dim=-1)
        centres = grid_centres(grid, token.device)
        if self.reference_window and not self.training:
            reference = local_soft_argmax(logits, grid, self.reference_window) @ centres
        else:
            reference = attention @ centres  # (B, 2) normalised x, y
        pooled = torch.einsum("bn,bnd->bd", attention.to(visual.dtype), self.value(visual))
        x = self.proj(token) + pooled
        delta = self.box_head(x).float()
        centre = (inverse_sigmoid(reference) + delta[:, :2]).sigmoid()
        boxes = torch.cat([centre, delta[:, 2:].sigmoid()], dim=-1)
        return {"logits": self.class_head(x), "boxes": boxes, "ref_logits": logits}


class MultiBranchTokenHead(nn.Module):
    """ONE over token branches: K copies of :class:`TokenBranch` and a gate on the token.

    Returns the gated ensemble's {"logits", "boxes", "ref_logits"} plus "branches" (the K
    outputs) and "gate" (B, K). In eval mode, ``deploy_branch`` (an index) runs only that
    branch (cheapest); None runs the ensemble. Training always runs every branch.
    """

    def __init__(
        self,
        dim: int,
        num_branches: int,
        box_mlp_layers: int = 3,
        deploy_branch: int | None = None,
        reference_window: int = 3,
    ):
        super().__init__()
        from distill.one import ONE

        self.one = ONE(lambda: TokenBranch(dim, box_mlp_layers, reference_window), num_branches, in_features=dim)
        if deploy_branch is not None and not 0 <= deploy_branch < num_branches:
            raise ValueError(f"head.deploy_branch {deploy_branch} out of range for {num_branches} token branches")
        self.deploy_branch = deploy_branch

    def forward(
        self, token: torch.Tensor, visual: torch.Tensor, visual_mask: torch.Tensor, grid: tuple[int, int]
    ) -> dict:
        from distill.one import gated_ensemble

        if not self.training and self.deploy_branch is not None:
            out = self.one.branches[self.deploy_branch](token, visual, visual_mask, grid)
            return {**out, "branches": [out], "gate": None}
        outputs = [branch(token, visual, visual_mask, grid) for branch in self.one.branches]
        gate = self.one.gate_weights(token)
        return {**gated_ensemble(gate, outputs), "branches": outputs, "gate": gate}
