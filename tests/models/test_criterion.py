"""The "cells" head's loss on target sets: no target, one, several."""

import pytest
import torch

from simvg.config import LossConfig
from simvg.models.criterion import GroundingCriterion
from simvg.models.set_loss import paired_iou

GRID = (4, 4)


def cells_outputs(batch: int, seed: int = 0, queries: int = 2) -> dict:
    generator = torch.Generator().manual_seed(seed)

    def boxes(*shape: int) -> torch.Tensor:
        return torch.cat([torch.rand(*shape, 2, generator=generator) * 0.6 + 0.2,
                          torch.rand(*shape, 2, generator=generator) * 0.3 + 0.05], dim=-1)  # fmt: skip

    cell_boxes = boxes(batch, 16).requires_grad_()
    ref_logits = torch.randn(batch, 16, generator=generator).requires_grad_()
    token = {"logits": torch.randn(batch, 2, generator=generator).requires_grad_(),
             "boxes": cell_boxes[torch.arange(batch), ref_logits.argmax(-1)], "ref_logits": ref_logits,
             "cell_boxes": cell_boxes}  # fmt: skip
    decoder = {"logits": torch.randn(batch, queries, 2, generator=generator).requires_grad_(),
               "boxes": boxes(batch, queries).requires_grad_(), "aux": []}  # fmt: skip
    return {"token": token, "decoder": decoder, "grid": GRID}


def detached(losses: dict) -> dict:
    return {k: float(v.detach()) for k, v in losses.items()}


@pytest.mark.parametrize("score_target", ["label", "iou"])
def test_one_box_sets_give_the_one_target_losses(score_target):
    criterion = GroundingCriterion(LossConfig(score_target=score_target))
    targets = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.6, 0.1, 0.3], [0.6, 0.3, 0.3, 0.3]])
    a, stats_a = criterion(cells_outputs(3), targets)
    b, stats_b = criterion(cells_outputs(3), [t[None] for t in targets])
    assert detached(a) == pytest.approx(detached(b)) and stats_a == pytest.approx(stats_b)


def test_a_phrase_without_target_trains_only_no_object():
    """Samples with no target leave the box and pointing losses to the others (as if they were
    not in the batch) and teach the answer's score "no object"."""
    criterion = GroundingCriterion(LossConfig(dwbd=False))
    target = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    out = cells_outputs(2)
    losses = detached(criterion(out, [target, torch.zeros(0, 4)])[0])
    alone = {k: {**v} if isinstance(v, dict) else v for k, v in out.items()}
    alone["token"] = {k: v[:1] for k, v in out["token"].items()}
    alone["decoder"] = {"logits": out["decoder"]["logits"][:1], "boxes": out["decoder"]["boxes"][:1], "aux": []}
    reference = detached(criterion(alone, target)[0])
    for key in ("loss_tok_l1", "loss_tok_giou", "loss_tok_ref"):
        assert losses[key] == pytest.approx(reference[key], rel=1e-5), key
    # The class loss: the mean of the sample with a target (its IoU) and -log P(no object).
    logits = out["token"]["logits"].detach()
    iou = float(paired_iou(out["token"]["boxes"][:1].detach(), target))
    log_p = logits[0].log_softmax(-1)
    expected = (-(iou * log_p[0] + (1 - iou) * log_p[1]) - logits[1].log_softmax(-1)[1]) / 2
    assert losses["loss_tok_ce"] == pytest.approx(float(expected), rel=1e-5)


def test_a_batch_without_any_target_is_finite_and_moves_no_box():
    criterion = GroundingCriterion(LossConfig())
    out = cells_outputs(2)
    losses, stats = criterion(out, [torch.zeros(0, 4), torch.zeros(0, 4)])
    total = criterion.total(losses, 1)
    assert torch.isfinite(total) and stats["dwbd_weight"] == 0.0
    total.backward()
    assert float(out["token"]["cell_boxes"].grad.abs().max()) == 0.0
    assert float(out["decoder"]["boxes"].grad.abs().max()) == 0.0
    assert float(out["token"]["logits"].grad.abs().max()) > 0.0


def test_the_single_answer_learns_the_target_nearest_to_it():
    """With several targets the token branch's one answer learns the one DETR's matching cost
    puts nearest it (its box loss is that target's), and the decoder's queries all of them."""
    criterion = GroundingCriterion(LossConfig(dwbd=False))
    out = cells_outputs(1, queries=3)
    answer = out["token"]["boxes"].detach()[0]
    near = answer + torch.tensor([0.01, 0.0, 0.0, 0.0])
    far = torch.tensor([0.9, 0.9, 0.1, 0.1])
    both = detached(criterion(out, [torch.stack([far, near])])[0])
    only_near = detached(criterion(out, near[None])[0])
    for key in ("loss_tok_l1", "loss_tok_giou", "loss_tok_ref", "loss_tok_ce"):
        assert both[key] == pytest.approx(only_near[key], rel=1e-5), key
    assert both["loss_dec_l1"] != pytest.approx(only_near["loss_dec_l1"])
