"""Landmark relation (ours, for the "cells" head; SimVG has none): the token branch also points
at the phrase's landmark, and scores the cells its own attention finds plausible by where they
lie relative to it.

"The big shape nearest to the large cyan square": the referred object is the candidate whose
distance to the landmark is smallest. Picking it needs each candidate's distance to the
landmark, compared across candidates, which the encoder's attention learned to compute
for directions ("left of") but not for distances within a 20-minute run: the teacher picked
among the candidates at chance. Here the branch gets a second attention over the cells, the
landmark pointer; the attention-weighted centre of that pointer is the landmark's position,
and the object token's attention logits over the cells get a term linear in each cell's
geometry relative to it (distance, x and y offset, in cells, and the pointer's own weight on
the cell), with coefficients read from the object token (so "nearest", "farthest", "left of"
each weigh them their own way, and phrases without a landmark can ignore them). The pointer
learns from the grounding loss, and where the annotations name the landmark
(``loss.landmark_ref``, SynthRef's programs) from its cell too.

Where the pointer's query comes from (``model.head.landmark_pointer``): "token", the object
token, over the branch's own keys; or "words" (:class:`WordsLandmarkPointer`), the phrase's
input embeddings read left to right by a small GRU, over keys of its own. The encoder's fused
tokens no longer tell which words name the landmark ("the red object right of the red
diamond"): pointers trained on the landmark's cell over a frozen teacher's outputs found it
for 31-34% of SynthRef's relational val phrases from its object token or its fused text
tokens (even through the GRU), for 92% from the input embeddings through the GRU
(bench/landmark_pointer_probe.py).
The words pointer reads the encoder's outputs without training them: trained on the
landmark's cell through the encoder, the "token" pointer drew the object token's own
attention to unrelated objects.

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


# Phrase words: (B, L, E) input embeddings and (B, L) bool mask (True on words), padded on the right.
Words = tuple[torch.Tensor, torch.Tensor]


class WordsLandmarkPointer(nn.Module):
    """The landmark pointer's query read from the phrase's words: a left-to-right GRU over the
    input embeddings chooses the words that name the landmark (those after "left of", "nearest
    to"), and their embeddings, pooled and projected, are the query over keys of its own.

    Its inputs are detached: the pointer learns, the encoder is not trained through it.
    Left to right, a word's state never sees the padding after the phrase, so a phrase points
    the same alone or in a padded batch.
    """

    def __init__(self, embedding_dim: int, dim: int, hidden: int = 128):
        super().__init__()
        self.reader = nn.GRU(embedding_dim, hidden, batch_first=True)
        # No biases where they would add one constant to every score before a softmax (over the
        # words for `select`, over the cells for `key`): such a bias changes nothing.
        self.select = nn.Linear(hidden, 1, bias=False)
        self.query = nn.Linear(embedding_dim, dim)
        self.key = nn.Linear(dim, dim, bias=False)

    def landmark_query(self, words: Words) -> torch.Tensor:
        """words (embeddings (B, L, E), mask (B, L)) -> (B, D) the query."""
        embeddings, mask = words[0].detach(), words[1]
        states, _ = self.reader(embeddings)
        selection = self.select(states)[..., 0].float().masked_fill(~mask, torch.finfo(torch.float32).min)
        return self.query(torch.einsum("bl,ble->be", selection.softmax(dim=-1).to(embeddings.dtype), embeddings))

    def forward(self, words: Words, visual: torch.Tensor, scale: float) -> torch.Tensor:
        """words, visual (B, N, D) the branch's visual tokens -> (B, N) float32 logits (unmasked)."""
        keys = self.key(visual.detach())
        return torch.einsum("bd,bnd->bn", self.landmark_query(words), keys).float() * scale


class LandmarkRelation(nn.Module):
    """forward(token (B, D), keys (B, N, D), visual_mask (B, N) bool, grid (h, w), scale,
    visual (B, N, D) and words (:data:`Words`), read by a "words" pointer) -> (bias (B, N)
    float32, the relation's term for the object token's attention logits (see
    :func:`relate_plausible`), landmark_logits (B, N) float32: the pointer's attention logits
    over the cells, masked like the keys)."""

    def __init__(self, dim: int, pointer: str = "token", embedding_dim: int | None = None):
        super().__init__()
        if pointer == "token":
            self.query = nn.Linear(dim, dim)
            self.pointer = None
        elif pointer == "words":
            if embedding_dim is None:
                raise ValueError("a words landmark pointer needs the encoder's embedding width")
            self.pointer = WordsLandmarkPointer(embedding_dim, dim)
        else:
            raise ValueError(f"unknown landmark pointer {pointer!r} (token or words)")
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
        visual: torch.Tensor | None = None,
        words: Words | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pointer is None:
            landmark_logits = torch.einsum("bd,bnd->bn", self.query(token), keys).float() * scale
        else:
            if words is None or visual is None:
                raise ValueError("this landmark relation's pointer reads the phrase's words; pass words and visual")
            landmark_logits = self.pointer(words, visual, scale)
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
