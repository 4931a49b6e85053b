"""The "cells" head with several queries: every cell answers with its own score."""

import pytest
import torch

from simvg.config import ConfigError, HeadConfig, LossConfig
from simvg.models import build_model
from simvg.models.criterion import GroundingCriterion, positive_cells, set_positive_cells
from simvg.models.heads.grid import grid_centres
from simvg.models.heads.token_branch import (
    INITIAL_PRESENCE_LOGIT,
    TokenBranch,
    answer_logits,
    presence_geometry_features,
)
from simvg.models.postprocess import select_boxes
from tests.models.test_model import inputs, tiny_config


@pytest.mark.parametrize("branches", [1, 2])
def test_every_cell_answers_with_a_score_and_padding_scores_nothing(branches):
    config = tiny_config("hybrid")
    config.head.num_queries = 3
    config.head.token_branches = branches
    config.head.deploy_branch = 0 if branches > 1 else None
    model = build_model(config, vocab_size=30522).eval()
    with torch.no_grad():
        out = model(*inputs())
    token = out["token"]
    assert token["logits"].shape == (2, 16, 2) and token["boxes"].shape == (2, 16, 4)
    assert out["decoder"]["logits"].shape == (2, 3, 2)
    padding = ~out["visual_mask"]
    assert padding.any() and float(token["logits"].softmax(-1)[..., 0][padding].max()) < 1e-6
    boxes, scores = select_boxes(out, "token")  # the single answer: the best-scored cell
    best = token["logits"].softmax(-1)[..., 0].argmax(dim=1)
    torch.testing.assert_close(boxes, token["boxes"][torch.arange(2), best])
    assert scores.shape == (2,)


def test_cells_on_several_targets_regress_their_own():
    grid = (4, 4)
    sets = [torch.tensor([[0.3, 0.3, 0.5, 0.5], [0.8, 0.8, 0.3, 0.3]]), torch.zeros(0, 4), torch.tensor([[0.5, 0.5, 0.2, 0.2]])]
    rows, goals, positives = set_positive_cells(sets, grid, torch.device("cpu"))
    assert rows.tolist() == [0, 2]
    first = positive_cells(sets[0], grid)
    assert torch.equal(positives[0], first.any(0))
    centres = grid_centres(grid)
    for cell in positives[0].nonzero().flatten().tolist():
        on = first[:, cell].nonzero().flatten()
        nearest = on[(sets[0][on, :2] - centres[cell]).norm(dim=-1).argmin()]
        assert torch.equal(goals[0, cell], sets[0][nearest])
    assert torch.equal(positives[1], positive_cells(sets[2], grid)[0])


def test_a_batch_without_targets_moves_no_cell_box():
    criterion = GroundingCriterion(LossConfig(dwbd=False))
    logits = torch.randn(2, 16, 2, requires_grad=True)
    boxes = torch.rand(2, 16, 4).mul(0.5).add(0.2).requires_grad_()
    out = {"token": {"logits": logits, "boxes": boxes, "cell_boxes": boxes, "ref_logits": torch.randn(2, 16)},
           "grid": (4, 4)}  # fmt: skip
    losses, _ = criterion(out, [torch.zeros(0, 4), torch.zeros(0, 4)])
    criterion.total(losses, 1).backward()
    assert float(boxes.grad.abs().max()) == 0.0 and float(logits.grad[..., 0].max()) > 0  # object logits pushed down


@pytest.mark.parametrize("assignment", ["match", "centre"])
def test_set_training_gives_one_answer_per_target_and_none_for_no_target(assignment):
    """A tiny branch on a 4 x 4 grid where the targets are the cells whose visual token carries a
    mark (0 to 3 per image): trained by matching (or on the targets' centre cells), the cells
    scoring >= 0.5 are exactly the targets' cells (one answer per target, no duplicates), and
    an image without a mark has none."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    grid, dim = (4, 4), 16
    centres = grid_centres(grid)
    branch = TokenBranch(dim, cell_scores=True)
    criterion = GroundingCriterion(LossConfig(dwbd=False, token_ref=0.0, cell_assignment=assignment))
    optimizer = torch.optim.Adam(branch.parameters(), lr=3e-3)

    def batch(size: int):
        visual = torch.randn(size, 16, dim, generator=generator)
        marked = torch.rand(size, 16, generator=generator) < torch.rand(size, 1, generator=generator) * 0.25
        visual[..., 0] = torch.where(marked, 2.0, -2.0)
        sets = [torch.cat([centres[m], torch.full((int(m.sum()), 2), 0.2)], dim=-1) for m in marked]
        return visual, marked, sets

    for _ in range(250):
        visual, _, sets = batch(32)
        out = branch(torch.randn(32, dim), visual, torch.ones(32, 16, dtype=torch.bool), grid)
        losses, _ = criterion({"token": out, "grid": grid}, sets)
        optimizer.zero_grad()
        criterion.total(losses, 1).backward()
        optimizer.step()
    visual, marked, _ = batch(200)
    with torch.no_grad():
        out = branch(torch.randn(200, dim), visual, torch.ones(200, 16, dtype=torch.bool), grid)
    answered = out["logits"].softmax(-1)[..., 0] >= 0.5
    assert marked.sum() > 200 and (~marked.any(1)).sum() > 10
    exact = float((answered == marked).all(1).float().mean())
    assert exact > 0.9, exact


def test_a_cell_answers_with_the_product_of_its_own_and_the_phrases_presence_probability():
    torch.manual_seed(0)
    cell_logits, presence = torch.randn(3, 5) * 6, torch.tensor([-8.0, 0.0, 9.0])
    logits = answer_logits(cell_logits, presence)
    expected = cell_logits.sigmoid() * presence.sigmoid()[:, None]
    torch.testing.assert_close(logits.softmax(-1)[..., 0], expected)
    assert torch.isfinite(answer_logits(torch.tensor([[-1e4, 40.0]]), torch.tensor([40.0]))).all()


def test_presence_learns_whether_the_phrase_names_anything():
    """The criterion's presence loss: a phrase without target lowers its presence logit, one
    with targets (one or several) raises it."""
    criterion = GroundingCriterion(LossConfig(dwbd=False))
    presence = torch.zeros(3, requires_grad=True)
    boxes = torch.rand(3, 16, 4).mul(0.5).add(0.2)
    out = {"token": {"logits": torch.randn(3, 16, 2), "boxes": boxes, "cell_boxes": boxes,
                     "ref_logits": torch.randn(3, 16), "presence_logits": presence}, "grid": (4, 4)}  # fmt: skip
    sets = [torch.zeros(0, 4), torch.tensor([[0.5, 0.5, 0.2, 0.2]]), torch.tensor([[0.3, 0.3, 0.2, 0.2]] * 2)]
    losses, _ = criterion(out, sets)
    assert "loss_tok_presence" in criterion.weight_dict
    criterion.total(losses, 1).backward()
    assert presence.grad[0] > 0 and (presence.grad[1:] < 0).all()  # gradient descent lowers the first


def test_the_centre_assignment_teaches_each_targets_centre_cell_object_and_every_other_cell_no_object():
    """loss.cell_assignment "centre": the cell holding each target's centre has its object
    logit pushed up, every other cell's down (also those on the target), and every cell of a
    phrase without target down."""
    criterion = GroundingCriterion(LossConfig(dwbd=False, token_ref=0.0, score_target="label", cell_assignment="centre"))
    grid = (4, 4)
    logits = torch.zeros(2, 16, 2, requires_grad=True)
    boxes = torch.rand(2, 16, 4).mul(0.5).add(0.2)
    out = {"token": {"logits": logits, "boxes": boxes, "cell_boxes": boxes, "ref_logits": torch.randn(2, 16)}, "grid": grid}
    targets = torch.tensor([[0.375, 0.375, 0.6, 0.6], [0.875, 0.125, 0.2, 0.2]])  # centres in cells 5 and 3
    losses, _ = criterion(out, [targets, torch.zeros(0, 4)])
    criterion.total(losses, 1).backward()
    raised = logits.grad[0, :, 0] < 0  # gradient descent raises these object logits
    assert raised.nonzero().flatten().tolist() == [3, 5]
    assert (logits.grad[0, :, 0][~raised] > 0).all() and (logits.grad[1, :, 0] > 0).all()


def test_the_ignore_threshold_leaves_a_centre_cells_look_alikes_untaught():
    """loss.cell_ignore_iou: a cell other than the centre cell whose box overlaps the target at
    that IoU or more gets no score gradient at all; the centre cell is still raised, a cell
    with a box elsewhere still lowered, and a phrase without target lowers every cell."""
    criterion = GroundingCriterion(LossConfig(dwbd=False, token_ref=0.0, score_target="label", cell_ignore_iou=0.5))
    target = torch.tensor([0.375, 0.375, 0.4, 0.4])  # centre in cell 5
    boxes = torch.tensor([0.8, 0.8, 0.1, 0.1]).repeat(2, 16, 1)
    boxes[0, [4, 5, 6]] = target  # cells 4 and 6 answer with the target's box, as cell 5 does
    boxes[0, 9] = torch.tensor([0.375, 0.375, 0.2, 0.2])  # IoU 0.25 with the target
    logits = torch.zeros(2, 16, 2, requires_grad=True)
    out = {"token": {"logits": logits, "boxes": boxes, "cell_boxes": boxes, "ref_logits": torch.randn(2, 16)}, "grid": (4, 4)}
    losses, _ = criterion(out, [target[None], torch.zeros(0, 4)])
    criterion.total(losses, 1).backward()
    grad = logits.grad[..., 0]
    assert grad[0, 5] < 0 and (grad[0, [4, 6]] == 0).all()
    others = [c for c in range(16) if c not in (4, 5, 6)]
    assert (grad[0, others] > 0).all() and (grad[1] > 0).all()


def test_the_pointer_learns_every_target_of_a_phrase():
    """With several targets the pointing loss is lowest when the attention is shared evenly by
    their centre cells; with one it is the single-target loss."""
    from simvg.models.criterion import reference_loss, reference_set_loss

    grid = (4, 4)
    targets = torch.tensor([[0.125, 0.125, 0.2, 0.2], [0.875, 0.875, 0.2, 0.2]])  # cells 0 and 15
    logits = torch.randn(3, 16)
    torch.testing.assert_close(reference_set_loss(logits, grid, [t[None] for t in targets] + [targets[:1]]),
                               reference_loss(logits, grid, torch.cat([targets, targets[:1]])))  # fmt: skip
    even, one = torch.zeros(1, 16), torch.zeros(1, 16)
    even[0, [0, 15]], one[0, 0] = 10.0, 10.0
    assert reference_set_loss(even, grid, [targets]) < reference_set_loss(one, grid, [targets])
    assert reference_set_loss(even, grid, [targets]) < 0.7 + 1e-3  # log 2: an even share is the optimum


def test_non_maximum_suppression_drops_duplicates_only():
    from simvg.models.postprocess import query_boxes

    boxes = torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.31, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]]] * 2)
    p = torch.tensor([[0.6, 0.9, 0.8], [0.9, 0.2, 0.1]])
    out = {"token": {"logits": torch.stack([p.log(), (1 - p).log()], dim=-1), "boxes": boxes}}
    _, raw = query_boxes(out, "token")
    torch.testing.assert_close(raw, p)
    _, scores = query_boxes(out, "token", nms_iou=0.5)
    torch.testing.assert_close(scores, torch.tensor([[0.0, 0.9, 0.8], [0.9, 0.0, 0.1]]))


def test_cells_given_presence_leave_a_phrase_without_target_to_the_presence_head():
    """loss.cells_given_presence: a phrase that names nothing teaches its cells nothing (their
    scores are the chance of answering given that the phrase names something) and still lowers
    its presence; a phrase with a target trains its cells as before."""
    config = LossConfig(dwbd=False, token_ref=0.0, score_target="label", cells_given_presence=True)
    criterion = GroundingCriterion(config)
    logits = torch.zeros(2, 16, 2, requires_grad=True)
    presence = torch.zeros(2, requires_grad=True)
    boxes = torch.rand(2, 16, 4).mul(0.5).add(0.2)
    out = {"token": {"logits": logits, "boxes": boxes, "cell_boxes": boxes, "ref_logits": torch.randn(2, 16),
                     "presence_logits": presence}, "grid": (4, 4)}  # fmt: skip
    target = torch.tensor([[0.375, 0.375, 0.6, 0.6]])  # centre in cell 5
    losses, _ = criterion(out, [target, torch.zeros(0, 4)])
    criterion.total(losses, 1).backward()
    grad = logits.grad[..., 0]
    assert grad[0, 5] < 0 and (grad[0, [c for c in range(16) if c != 5]] > 0).all()
    assert (logits.grad[1] == 0).all() and presence.grad[1] > 0
    with pytest.raises(ValueError, match="cells_given_presence"):
        LossConfig(cells_given_presence=True, cell_assignment="match")


@pytest.mark.parametrize("trains", [False, True])
def test_presence_trains_the_encoders_tokens_only_when_asked(trains):
    """model.head.presence_trains_encoder: the presence logit's gradient reaches the object token
    and the visual tokens it reads; by default it reads them without training them."""
    torch.manual_seed(0)
    branch = TokenBranch(16, cell_scores=True, presence_trains_encoder=trains)
    torch.nn.init.normal_(branch.presence_head.layers[-1].weight)  # it starts at 0: "present" whatever it reads
    token = torch.randn(2, 16, requires_grad=True)
    visual = torch.randn(2, 16, 16, requires_grad=True)
    out = branch(token, visual, torch.ones(2, 16, dtype=torch.bool), (4, 4))
    out["presence_logits"].sum().backward()
    reached = [bool((t.grad is not None) and (t.grad != 0).any()) for t in (token, visual)]
    assert reached == [trains, trains]


def test_presence_geometry_places_the_answer_about_the_image_centre_and_the_landmark():
    """The answer's centre, x right and y down in half image sides, then its offset from the
    landmark: an answer in the top right cell of a 4 x 4 grid, the landmark at the bottom left."""
    grid = (4, 4)
    boxes = torch.cat([grid_centres(grid), torch.full((16, 2), 0.2)], dim=-1)[None]  # each cell's box on its centre
    answer = torch.zeros(1, 16)
    answer[0, 3] = 1.0  # row 0, column 3: centre (0.875, 0.125)
    landmark = torch.zeros(1, 16)
    landmark[0, 12] = 1.0  # row 3, column 0: centre (0.125, 0.875)
    features = presence_geometry_features(answer, boxes, landmark, grid)[0]
    expected = [0.75, -0.75, 0.75, 0.75, 0.75, 1.5, -1.5, 1.5, 1.5, 1.5 * 2**0.5]
    torch.testing.assert_close(features, torch.tensor(expected))
    assert (presence_geometry_features(answer, boxes, None, grid)[0, 5:] == 0).all()
    # A letterboxed image (its left half only; the rest padding): its own frame, not the input's.
    mask = (grid_centres(grid)[:, 0] < 0.5)[None]
    answer = torch.zeros(1, 16)
    answer[0, 1] = 1.0  # row 0, column 1: x 0.375 of the input, 0.75 of the image
    torch.testing.assert_close(presence_geometry_features(answer, boxes, None, grid, mask)[0, :2], torch.tensor([0.5, -0.75]))


def test_presence_geometry_starts_silent_and_learns_from_the_presence_loss():
    """model.head.presence_geometry: a fresh branch says "present" whatever the phrase, as
    without it; the presence loss then trains the coefficients it reads from the phrase."""
    torch.manual_seed(0)
    branch = TokenBranch(16, cell_scores=True, landmark_relation=True, presence_geometry=True)
    out = branch(torch.randn(2, 16), torch.randn(2, 16, 16), torch.ones(2, 16, dtype=torch.bool), (4, 4))
    torch.testing.assert_close(out["presence_logits"], torch.full((2,), INITIAL_PRESENCE_LOGIT))
    out["presence_logits"].sum().backward()
    assert (branch.presence_geometry.weight.grad != 0).any()
    config = tiny_config("hybrid")
    config.head.num_queries, config.head.presence_geometry = 3, True
    with torch.no_grad():
        out = build_model(config, vocab_size=30522).eval()(*inputs())
    torch.testing.assert_close(out["token"]["presence_logits"], torch.full((2,), INITIAL_PRESENCE_LOGIT))


def test_presence_options_on_a_head_without_presence_name_the_key():
    with pytest.raises(ConfigError, match="model.head.presence_geometry"):
        HeadConfig(num_queries=1, presence_geometry=True)
    with pytest.raises(ConfigError, match="model.head.presence_trains_encoder"):
        HeadConfig(type="simvg", num_queries=10, presence_trains_encoder=True)
