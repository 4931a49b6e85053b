"""The "cells" head's token branch (ours, not SimVG's: simvg_token_branch.py is SimVG's): one
box and a 2-way score from the (query-enriched) object token.

SimVG regresses the box from the object token with an MLP. Here the object token acts as
one attention query over the encoder's visual tokens, and the box comes from the token it
points at: the attention logits get a direct loss (which token holds the target's centre),
and every visual token regresses a box relative to its own cell (conditioned on the object
token), trained on the cells that lie on the target. Finding the object (which cell) and
measuring it (the box around that cell) are learned separately, from far fewer samples than
a box regressed from the object token alone; at inference it costs one (1 x N) attention and
a small MLP over the tokens.

The answer is the box of the most attended cell (or the attention-weighted boxes of a small
window around it), never an average over the whole grid: when the attention is split
between candidate objects, the global average lands between them, on no object.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import torch
from torch import nn

from simvg.models.heads.grid import grid_centres
from simvg.models.heads.landmark_relation import LandmarkRelation, Words, relate_plausible
from simvg.models.heads.mlp import MLP

# sigmoid(-1.7) = 0.15: a box of about a sixth of the image side.
INITIAL_SIZE_LOGIT = -1.7
# A phrase's presence logit before training: sigmoid(2) = 0.88, "present" (see TokenBranch).
INITIAL_PRESENCE_LOGIT = 2.0


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


# Per-cell detail features: a (B, N, D) tensor, or a function of cell indices (B, K) (None =
# every cell) returning (B, K, D), so that inference projects only the cells it reads.
Detail = torch.Tensor | Callable[[torch.Tensor | None], torch.Tensor]


def gather_cells(tokens: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """tokens (B, N, D), cells (B, K) indices -> (B, K, D)."""
    return tokens.gather(1, cells[..., None].expand(-1, -1, tokens.shape[-1]))


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
    """Object token -> {"logits": (B, 2), "boxes": (B, 4), "ref_logits": (B, N)
    [, "cell_boxes": (B, N, 4)]}; boxes are normalised cx, cy, w, h.

    forward(token (B, D), visual (B, N, D), visual_mask (B, N) bool, grid (h, w), detail
    optional finer features per cell added to the box regression's input (a :data:`Detail`),
    all_cells, words the phrase's input embeddings and mask (read by a "words" landmark
    pointer)). ``ref_logits`` are the object token's attention logits over the visual tokens:
    which token holds the referred object's centre. ``cell_boxes`` holds one box per
    visual token, regressed from that token (conditioned on the object token) relative to its
    cell. ``boxes`` is the answer: the cell boxes in the ``reference_window`` x
    ``reference_window`` tokens around the attention peak, weighted by the attention within
    that window (odd; 1 = the peak's own box; 0 = weighted over the whole grid).

    With ``landmark_relation`` (:mod:`~simvg.models.heads.landmark_relation`), ``ref_logits``
    add the relation's term on the plausible cells (float32's lowest elsewhere), and
    ``landmark_logits`` (B, N) (the pointer's) and ``content_logits`` (B, N) (the object
    token's own attention logits, without the term) are returned too.

    ``cell_boxes`` is computed (and returned) when ``all_cells`` is true; by default in
    training, or whenever the answer reads more than the peak cell. Otherwise only the peak
    cell's box is regressed: the same answer at a fraction of the head's inference cost.

    With ``cell_scores`` (several answers: phrases that name several objects or none) every
    cell also gets an object logit from the same input as its box (a small MLP), plus
    ``pointer_gain`` times the pointer's log-probability of the cell (<= 0); the phrase gets a
    presence logit (does it name anything here?) from the attention-pooled token; a cell's
    object probability is the product of the two sigmoids. The branch answers with every cell:
    "logits" (B, N, 2) (log P(object), log P(no object)), "boxes" (B, N, 4) (= "cell_boxes"),
    "presence_logits" (B,) and "cell_logits" (B, N, 2), the cells' own 2-way logits; padding
    cells score "no object". The cells' own scores are trained on the cells that answer each
    target (``loss.cell_assignment``), presence against whether the phrase names anything (see
    the criterion). Presence reads the branch's inputs without training them, unless
    ``presence_trains_encoder``: then its loss also trains the object token and the visual
    tokens it reads (the pointer's attention stays untrained by it either way). With
    ``presence_geometry`` presence also weighs where the answer lies, and where it lies relative
    to the landmark, with coefficients read from the phrase (:func:`presence_geometry_features`).
    """

    def __init__(
        self,
        dim: int,
        box_mlp_layers: int = 3,
        reference_window: int = 1,
        landmark_relation: bool = False,
        landmark_pointer: str = "token",
        embedding_dim: int | None = None,
        cell_scores: bool = False,
        presence_trains_encoder: bool = False,
        presence_geometry: bool = False,
    ):
        super().__init__()
        self.presence_trains_encoder = presence_trains_encoder
        if reference_window < 0 or (reference_window and reference_window % 2 == 0):
            raise ValueError(f"model.head.reference_window must be 0 or odd, got {reference_window}")
        self.reference_window = reference_window
        self.proj = nn.Linear(dim, dim)
        self.query = nn.Linear(dim, dim)
        # No key bias: it would add query . bias, one constant, to every cell's logit.
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim)
        self.condition = nn.Linear(dim, dim)
        # One score for the answer (the attention-pooled token), or one per cell.
        self.class_head = None if cell_scores else nn.Linear(dim, 2)
        self.score_head = MLP(dim, dim, 2, 2) if cell_scores else None
        # A cell's object score also reads how close its pointer logit is to the peak's: the
        # pointer holds the phrase's relations (the landmark, "left of"), the cell's own
        # features do not, and a one-answer model fine-tuned for several answers keeps its answers.
        self.pointer_gain = nn.Parameter(torch.ones(())) if cell_scores else None
        # Whether the phrase names anything at all (ReLA's no-target classifier), read from the
        # phrase and what the pointer found, its best match (the attention-pooled token), once
        # per phrase rather than per cell. It starts out saying "present".
        self.presence_head = MLP(dim, dim, 1, 2) if cell_scores else None
        if self.presence_head is not None:
            nn.init.zeros_(self.presence_head.layers[-1].weight)
            nn.init.constant_(self.presence_head.layers[-1].bias, INITIAL_PRESENCE_LOGIT)
        # Where the answer lies, weighed as the phrase says ("on the right": its x; "above the
        # square": its y offset from the landmark): see presence_geometry_features.
        self.presence_geometry = nn.Linear(dim, PRESENCE_GEOMETRY_FEATURES) if cell_scores and presence_geometry else None
        if self.presence_geometry is not None:
            nn.init.zeros_(self.presence_geometry.weight)
            nn.init.zeros_(self.presence_geometry.bias)
        self.box_head = MLP(dim, dim, 4, box_mlp_layers)
        self.scale = 1.0 / math.sqrt(dim)
        self.landmark_relation = LandmarkRelation(dim, landmark_pointer, embedding_dim) if landmark_relation else None
        # Every cell starts by proposing a box centred on itself, of a typical object size.
        last = self.box_head.layers[-1]
        nn.init.zeros_(last.weight)
        with torch.no_grad():
            last.bias.copy_(torch.tensor([0.0, 0.0, INITIAL_SIZE_LOGIT, INITIAL_SIZE_LOGIT]))

    def forward(
        self,
        token: torch.Tensor,
        visual: torch.Tensor,
        visual_mask: torch.Tensor,
        grid: tuple[int, int],
        detail: Detail | None = None,
        all_cells: bool | None = None,
        words: Words | None = None,
    ) -> dict[str, torch.Tensor]:
        if all_cells is None:
            all_cells = self.training or self.reference_window != 1
        keys = self.key(visual)
        logits = (torch.einsum("bd,bnd->bn", self.query(token), keys) * self.scale).float()
        logits = logits.masked_fill(~visual_mask, torch.finfo(torch.float32).min)
        relation = {}
        if self.landmark_relation is not None:
            bias, landmark_logits = self.landmark_relation(token, keys, visual_mask, grid, self.scale, visual, words)
            relation = {"landmark_logits": landmark_logits, "content_logits": logits}
            logits = relate_plausible(logits, bias)
        attention = logits.softmax(dim=-1)
        condition = self.condition(token)
        if self.score_head is not None:  # every cell answers, with its own score
            features = self._cell_features(condition, visual, detail)
            cell_boxes = cell_boxes_from_deltas(self.box_head(features).float(), grid)
            scores = self.score_head(features).float()
            # The pointer's log-probability of the cell: near 0 at a sure peak, log 1/2 for a
            # peak shared with a look-alike, far below it elsewhere.
            pointed = logits.log_softmax(dim=-1).clamp(min=-30.0)
            cell_logits = scores[..., 0] + self.pointer_gain * pointed - scores[..., 1]
            # Presence reads where the branch points without training it, and its inputs either
            # without training them (the answers alone shape the features) or, with
            # presence_trains_encoder, training them too (whether a location or relation holds
            # is then learnt where presence reads it).
            pointer, seen, phrase = attention.detach().to(visual.dtype), visual, token
            if not self.presence_trains_encoder:
                seen, phrase = visual.detach(), token.detach()
            pooled = self.value(torch.einsum("bn,bnd->bd", pointer, seen))
            presence = self.presence_head(self.proj(phrase) + pooled).float()[:, 0]  # (B,)
            if self.presence_geometry is not None:
                landmark = relation["landmark_logits"].softmax(dim=-1).detach() if relation else None
                geometry = presence_geometry_features(attention.detach(), cell_boxes.detach(), landmark, grid, visual_mask)
                presence = presence + (self.presence_geometry(phrase).float() * geometry).sum(dim=-1)
            cell_logits = cell_logits.masked_fill(~visual_mask, -1e4)
            # The cells are trained on their own probability (a phrase that names nothing lowers
            # every cell, unless loss.cells_given_presence), presence on its own loss; the
            # answer is both.
            scores = answer_logits(cell_logits, presence.detach())
            own = torch.stack([cell_logits, torch.zeros_like(cell_logits)], dim=-1)
            return {"logits": scores, "cell_logits": own, "boxes": cell_boxes, "cell_boxes": cell_boxes,
                    "ref_logits": logits, "presence_logits": presence} | relation  # fmt: skip
        # value() is affine and the attention sums to 1: pooling first is the same, 1/N the work.
        pooled = self.value(torch.einsum("bn,bnd->bd", attention.to(visual.dtype), visual))
        x = self.proj(token) + pooled
        out = {"logits": self.class_head(x), "ref_logits": logits} | relation
        if not all_cells:  # the answer is the peak cell's box: regress that one only
            peak = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            box = self._cell_boxes(condition, gather_cells(visual, peak), grid, detail, peak)
            return out | {"boxes": box[:, 0]}
        cell_boxes = self._cell_boxes(condition, visual, grid, detail)
        weights = local_soft_argmax(logits, grid, self.reference_window) if self.reference_window else attention
        boxes = torch.einsum("bn,bnc->bc", weights, cell_boxes)
        return out | {"boxes": boxes, "cell_boxes": cell_boxes}

    def _cell_boxes(
        self,
        condition: torch.Tensor,
        visual: torch.Tensor,
        grid: tuple[int, int],
        detail: Detail | None,
        cells: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, K, 4) cxcywh boxes of the cells ``cells`` (B, K) token indices (None: every
        cell, K = N), from their visual tokens ``visual`` (B, K, D) and ``condition`` (B, D),
        the projected object token."""
        features = self._cell_features(condition, visual, detail, cells)
        return cell_boxes_from_deltas(self.box_head(features).float(), grid, cells)

    def _cell_features(
        self, condition: torch.Tensor, visual: torch.Tensor, detail: Detail | None, cells: torch.Tensor | None = None
    ) -> torch.Tensor:
        """What a cell's box (and score) is read from: its visual token plus the projected
        object token (plus its detail), (B, K, D)."""
        features = visual + condition[:, None]
        if detail is not None:
            if callable(detail):
                features = features + detail(cells)
            else:
                features = features + (detail if cells is None else gather_cells(detail, cells))
        return features


# The answer's centre (x, y, |x|, |y|, max(|x|, |y|)) about the image's centre and its offset
# from the landmark (dx, dy, |dx|, |dy|, distance), both in units of half the image side.
PRESENCE_GEOMETRY_FEATURES = 10


def presence_geometry_features(
    attention: torch.Tensor,
    cell_boxes: torch.Tensor,
    landmark: torch.Tensor | None,
    grid: tuple[int, int],
    visual_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Where the branch's answer lies, for presence to check a location or a relation against
    it: attention (B, N) the pointer's (sums to 1), cell_boxes (B, N, 4) normalised cxcywh,
    landmark (B, N) the landmark pointer's attention or None, visual_mask (B, N) True on the
    image's cells (a letterboxed image leaves the rest as padding; None: all) ->
    (B, PRESENCE_GEOMETRY_FEATURES). The answer's centre is the attention-weighted centre of the
    cells' boxes; the landmark's, its pointer's attention-weighted cell centre (its zeros where
    there is no landmark pointer); both in the image's frame, not the padded input's.

    Presence weighs them with coefficients read from the phrase (a product, not an input to its
    MLP): "on the right" then holds where one coefficient times x is large, which a sum of the
    phrase's and the answer's features fed to an MLP did not learn in a 1400-step run.
    """
    extent = attention.new_ones(attention.shape[0], 2)  # the image's share of the input, (width, height)
    if visual_mask is not None:
        cells = visual_mask.reshape(-1, *grid)
        counts = torch.stack([cells.any(dim=1).sum(dim=-1), cells.any(dim=2).sum(dim=-1)], dim=-1)  # columns, rows
        extent = counts / torch.tensor(grid[::-1], device=counts.device)
        extent = extent.float().clamp(min=1.0 / max(grid))
    centre = torch.einsum("bn,bnc->bc", attention.float(), cell_boxes[..., :2].float()) / extent * 2 - 1  # (B, 2)
    features = [centre, centre.abs(), centre.abs().amax(dim=-1, keepdim=True)]
    if landmark is None:
        features.append(centre.new_zeros(centre.shape[0], 5))
    else:
        anchor = landmark.float() @ grid_centres(grid, landmark.device) / extent * 2 - 1
        offset = centre - anchor
        features += [offset, offset.abs(), offset.norm(dim=-1, keepdim=True)]
    return torch.cat(features, dim=-1)


def answer_logits(cell_logits: torch.Tensor, presence_logits: torch.Tensor) -> torch.Tensor:
    """2-way logits (B, N, 2) whose softmax is P(object) = sigmoid(cell) * sigmoid(presence),
    from the cells' object logits (B, N) and the phrase's presence logits (B,): [log p,
    log(1 - p)], computed in log space (1 - p = sigmoid(-cell) + sigmoid(cell) sigmoid(-presence))."""
    presence = presence_logits[:, None].expand_as(cell_logits)
    log_object = log_sigmoid(cell_logits) + log_sigmoid(presence)
    log_other = torch.logsumexp(
        torch.stack([log_sigmoid(-cell_logits), log_sigmoid(cell_logits) + log_sigmoid(-presence)]), dim=0
    )
    return torch.stack([log_object, log_other], dim=-1)


def log_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """log(sigmoid(x)) = min(x, 0) - log(1 + exp(-|x|)), finite for every finite x, also in an
    ONNX export: with F.logsigmoid, onnxruntime scored every cell of a phrase whose presence is
    very low exactly 0 (torch: about 1e-19), so its best answer was the first cell's
    (tests/test_onnx.py)."""
    return x.clamp(max=0) - torch.log1p(torch.exp(-x.abs()))


def cell_boxes_from_deltas(delta: torch.Tensor, grid: tuple[int, int], cells: torch.Tensor | None = None) -> torch.Tensor:
    """The box MLP's (B, K, 4) outputs (centre offsets in cell units, size logits) of the cells
    ``cells`` (B, K) (None: every cell) -> (B, K, 4) normalised cxcywh boxes."""
    centres = grid_centres(grid, delta.device)
    if cells is not None:
        centres = centres[cells]
    centres = centres + delta[..., :2] * _cell_size(tuple(grid), delta.device)
    return torch.cat([centres, delta[..., 2:].sigmoid()], dim=-1)


@lru_cache(maxsize=32)
@torch.inference_mode(False)
def _cell_size(grid: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(2,) a cell's (width, height) in units of the image side."""
    return torch.tensor([1.0 / grid[1], 1.0 / grid[0]], device=device)


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
        reference_window: int = 1,
        landmark_relation: bool = False,
        landmark_pointer: str = "token",
        embedding_dim: int | None = None,
        cell_scores: bool = False,
        presence_trains_encoder: bool = False,
        presence_geometry: bool = False,
    ):
        super().__init__()
        from distill.one import ONE

        self.one = ONE(lambda: TokenBranch(dim, box_mlp_layers, reference_window, landmark_relation, landmark_pointer,
                                           embedding_dim, cell_scores, presence_trains_encoder, presence_geometry),
                       num_branches, in_features=dim)  # fmt: skip
        if deploy_branch is not None and not 0 <= deploy_branch < num_branches:
            raise ValueError(f"head.deploy_branch {deploy_branch} out of range for {num_branches} token branches")
        self.deploy_branch = deploy_branch

    def forward(
        self,
        token: torch.Tensor,
        visual: torch.Tensor,
        visual_mask: torch.Tensor,
        grid: tuple[int, int],
        detail: Detail | None = None,
        all_cells: bool | None = None,
        words: Words | None = None,
    ) -> dict:
        from distill.one import gated_ensemble

        if not self.training and self.deploy_branch is not None:
            out = self.one.branches[self.deploy_branch](token, visual, visual_mask, grid, detail, all_cells, words)
            return {**out, "branches": [out], "gate": None}
        outputs = [branch(token, visual, visual_mask, grid, detail, all_cells, words) for branch in self.one.branches]
        gate = self.one.gate_weights(token)
        return {**gated_ensemble(gate, outputs), "branches": outputs, "gate": gate}
