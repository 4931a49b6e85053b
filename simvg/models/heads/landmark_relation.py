"""Landmark relation: the token branch also points at the phrase's landmark, and scores the
cells its own attention finds plausible by where they lie relative to it.

"The big shape nearest to the large cyan square": the referred object is the candidate whose
distance to the landmark is smallest. Picking it needs each candidate's distance to the
landmark, compared across candidates, which the encoder's attention learned to compute
for directions ("left of") but not for distances within a 20-minute run: the teacher picked
among the candidates at chance. Here the object token gets a second attention query, the
landmark pointer, over the same keys as its own; the attention-weighted centre of that
pointer is the landmark's position, and the object token's attention logits over the cells
get a term linear in each cell's geometry relative to it (distance, x and y offset, in
cells, and the pointer's own weight on the cell), with coefficients read from the object
token (so "nearest", "farthest", "left of" each weigh them their own way, and phrases
without a landmark can ignore them). The pointer learns from the grounding loss alone; it can
also be trained directly where the annotations name the landmark (``loss.landmark_ref``,
SynthRef's programs), but on the default teacher that cost accuracy (README).

The term only chooses among the cells the object token's own attention already finds
plausible (:func:`relate_plausible`), and that attention keeps its own loss (the criterion's
``loss_tok_ref``): added everywhere, the term learned to answer with whatever object lay in the
right place, and the phrase's own attention stopped telling the objects that fit its words
from the others ("the circle left of the square" answered with an unrelated object three times
in ten).
"""

from __future__ import annotations

import torch
from torch import nn

from simvg.models.heads.grid import grid_centres

# distance, x offset, y offset (cells), the pointer's weight on the cell (times grid width)
RELATION_FEATURES = 4
# The relation's term reaches the cells whose own attention logit is within this of the row's
# best: exp(-3) = 5% of the best cell's attention.
PLAUSIBLE_MARGIN = 3.0


class LandmarkRelation(nn.Module):
    """forward(token (B, D), keys (B, N, D), visual_mask (B, N) bool, grid (h, w), scale) ->
    (bias (B, N) float32, the relation's term for the object token's attention logits (see
    :func:`relate_plausible`), landmark_logits (B, N) float32: the pointer's attention logits
    over the cells, masked like the keys)."""

    def __init__(self, dim: int):
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.coefficients = nn.Linear(dim, RELATION_FEATURES)
        # Starts with no effect on the branch's answer.
        nn.init.zeros_(self.coefficients.weight)
        nn.init.zeros_(self.coefficients.bias)

    def forward(
        self,
        token: torch.Tensor,
        keys: torch.Tensor,
        visual_mask: torch.Tensor,
        grid: tuple[int, int],
        scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        landmark_logits = torch.einsum("bd,bnd->bn", self.query(token), keys).float() * scale
        landmark_logits = landmark_logits.masked_fill(~visual_mask, torch.finfo(torch.float32).min)
        bias = relation_bias(self.coefficients(token).float(), landmark_logits.softmax(dim=-1), grid)
        return bias, landmark_logits


def relation_bias(coefficients: torch.Tensor, landmark: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """coefficients (B, RELATION_FEATURES), landmark (B, N) attention over the cells (sums to
    1) -> (B, N): each cell's features relative to the landmark's attention-weighted centre,
    weighted by the coefficients."""
    h, w = grid
    cells = grid_centres(grid, landmark.device) * torch.tensor([w, h], device=landmark.device)  # (N, 2) in cells
    position = landmark @ cells  # (B, 2)
    offset = cells[None] - position[:, None]  # (B, N, 2)
    distance = (offset.square().sum(dim=-1) + 1e-6).sqrt()
    features = torch.cat([distance[..., None], offset, landmark[..., None] * w], dim=-1)  # (B, N, F)
    return torch.einsum("bnf,bf->bn", features, coefficients)


def relate_plausible(content: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """content (B, N) the object token's own attention logits (masked cells at float32's lowest),
    bias (B, N) the relation's term -> (B, N) the answer's logits: content + bias on the cells
    whose content logit is within :data:`PLAUSIBLE_MARGIN` of the row's best, float32's lowest
    elsewhere (the best cell always stays). Which cells are plausible carries no gradient."""
    with torch.no_grad():
        plausible = content >= content.amax(dim=-1, keepdim=True) - PLAUSIBLE_MARGIN
    return (content + bias).masked_fill(~plausible, torch.finfo(torch.float32).min)
