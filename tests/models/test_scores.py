"""Scores that rank: trained with score_target "iou", a box's score is high when the box is
right and low when it is wrong or the phrase names nothing."""

import pytest
import torch

from simvg.config import LossConfig
from simvg.models.criterion import GroundingCriterion
from simvg.models.heads.simvg_token_branch import SimVGTokenBranch
from simvg.models.set_loss import paired_iou
from simvg.models.simvg_criterion import SimVGCriterion

DIM = 16


def problem(batch: int, generator: torch.Generator) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Tokens of three kinds, told apart by feature 0: +1, a target whose box the other features
    give (learnable); -1, a target at a random place (not learnable: the box ends up wrong);
    0, no target."""
    kind = torch.randint(0, 3, (batch,), generator=generator)
    tokens = torch.randn(batch, DIM, generator=generator)
    tokens[:, 0] = torch.tensor([1.0, -1.0, 0.0])[kind]
    targets = []
    for i in range(batch):
        if kind[i] == 0:
            centre = 0.5 + 0.25 * torch.tanh(tokens[i, 1:3])
        elif kind[i] == 1:
            centre = torch.rand(2, generator=generator) * 0.6 + 0.2
        else:
            targets.append(torch.zeros(0, 4))
            continue
        targets.append(torch.cat([centre, torch.tensor([0.25, 0.25])])[None])
    return tokens, targets


def auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """The probability that a positive scores above a negative (ties count half)."""
    above = (positive[:, None] > negative[None]).float() + 0.5 * (positive[:, None] == negative[None]).float()
    return float(above.mean())


def cells_outputs(branch_out: dict) -> dict:
    """The tiny branch's answer as a "cells" token branch's (a 1 x 1 grid: one cell)."""
    boxes = branch_out["boxes"][:, 0]
    return {"token": {"logits": branch_out["logits"][:, 0], "boxes": boxes, "cell_boxes": boxes[:, None],
                      "ref_logits": torch.zeros(len(boxes), 1)}, "grid": (1, 1)}  # fmt: skip


@pytest.mark.parametrize("head", ["simvg", "cells"])
def test_the_trained_score_separates_right_from_wrong_and_from_no_target(head):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    branch = SimVGTokenBranch(DIM)
    loss = LossConfig(score_target="iou", dwbd=False, token_ref=0.0)
    criterion = SimVGCriterion(loss, decoder_layers=1) if head == "simvg" else GroundingCriterion(loss)
    optimizer = torch.optim.Adam(branch.parameters(), lr=3e-3)
    for _ in range(300):
        tokens, targets = problem(64, generator)
        out = {"token": branch(tokens[:, None])} if head == "simvg" else cells_outputs(branch(tokens[:, None]))
        losses, _ = criterion(out, targets)
        optimizer.zero_grad()
        criterion.total(losses, 1).backward()
        optimizer.step()
    with torch.no_grad():
        tokens, targets = problem(600, generator)
        out = branch(tokens[:, None])
    scores = out["logits"][:, 0].softmax(-1)[:, 0]
    has_target = torch.tensor([len(t) == 1 for t in targets])
    goals = torch.stack([t[0] if len(t) else torch.zeros(4) for t in targets])
    right = has_target & (paired_iou(out["boxes"][:, 0], goals) >= 0.5)
    wrong = has_target & ~right
    assert right.sum() > 100 and wrong.sum() > 100  # both kinds of answer occur
    assert auroc(scores[right], scores[wrong | ~has_target]) > 0.9
    # No target: "no object" (weighted no_object_weight in the "simvg" head's loss, as DETR's).
    assert float(scores[~has_target].mean()) < float(scores[right].mean()) - 0.2
