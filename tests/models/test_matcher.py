"""Hungarian matching of predicted boxes to a target set."""

import itertools

import pytest
import torch
from torchvision.ops import box_convert, generalized_box_iou

from simvg.models.matcher import OBJECT, hungarian_match, match_cost


def random_boxes(generator: torch.Generator, *shape: int) -> torch.Tensor:
    centre = torch.rand(*shape, 2, generator=generator) * 0.6 + 0.2
    size = torch.rand(*shape, 2, generator=generator) * 0.3 + 0.05
    return torch.cat([centre, size], dim=-1)


def brute_force(cost: torch.Tensor) -> float:
    """The lowest total cost over every one-to-one matching of min(P, T) pairs."""
    predictions, targets = cost.shape
    if predictions >= targets:
        return min(sum(float(cost[p, t]) for t, p in enumerate(chosen))
                   for chosen in itertools.permutations(range(predictions), targets))  # fmt: skip
    return min(sum(float(cost[p, t]) for p, t in enumerate(chosen))
               for chosen in itertools.permutations(range(targets), predictions))  # fmt: skip


@pytest.mark.parametrize("predictions,targets", [(1, 1), (4, 1), (4, 3), (5, 5), (2, 4), (3, 0)])
def test_matching_is_one_to_one_and_as_cheap_as_the_best_of_all(predictions, targets):
    generator = torch.Generator().manual_seed(predictions * 10 + targets)
    for _ in range(5):
        logits = torch.randn(2, predictions, 2, generator=generator)
        boxes = random_boxes(generator, 2, predictions)
        sets = [random_boxes(generator, targets), random_boxes(generator, max(targets - 1, 0))]
        matches = hungarian_match(logits, boxes, sets)
        for i, (pred, goal) in enumerate(matches):
            n = min(predictions, len(sets[i]))
            assert len(pred) == len(goal) == n
            assert len(set(pred.tolist())) == n and len(set(goal.tolist())) == n
            if n == 0:
                continue
            cost = match_cost(logits[i], boxes[i], sets[i])
            assert float(cost[pred, goal].sum()) == pytest.approx(brute_force(cost), abs=1e-5)


def test_cost_is_detrs():
    generator = torch.Generator().manual_seed(0)
    logits, boxes, targets = torch.randn(3, 2, generator=generator), random_boxes(generator, 3), random_boxes(generator, 2)
    prob = logits.softmax(-1)[:, OBJECT]
    l1 = (boxes[:, None] - targets[None]).abs().sum(-1)
    giou = generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"), box_convert(targets, "cxcywh", "xyxy"))
    expected = -1.0 * prob[:, None] + 5.0 * l1 - 2.0 * giou
    torch.testing.assert_close(match_cost(logits, boxes, targets), expected)


def test_a_right_box_wins_its_target():
    targets = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]])
    boxes = torch.tensor([[[0.5, 0.5, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2]]])
    pred, goal = hungarian_match(torch.zeros(1, 3, 2), boxes, [targets])[0]
    assert dict(zip(goal.tolist(), pred.tolist())) == {0: 2, 1: 1}
