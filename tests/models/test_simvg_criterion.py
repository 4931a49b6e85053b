"""The "simvg" head's loss: DETR's set loss per branch, auxiliary losses, DWBD."""

import pytest
import torch

from simvg.config import LossConfig, ModelConfig
from simvg.models.criterion import GroundingCriterion, build_criterion
from simvg.models.set_loss import paired_iou
from simvg.models.simvg_criterion import SimVGCriterion


def outputs(batch: int = 2, queries: int = 3, layers: int = 3, seed: int = 0, token_queries: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)

    def branch(q: int) -> dict:
        boxes = torch.cat([torch.rand(batch, q, 2, generator=generator) * 0.6 + 0.2,
                           torch.rand(batch, q, 2, generator=generator) * 0.3 + 0.05], dim=-1)  # fmt: skip
        return {"logits": torch.randn(batch, q, 2, generator=generator).requires_grad_(),
                "boxes": boxes.requires_grad_()}  # fmt: skip

    token = branch(token_queries)
    if token_queries == 1:
        token = {k: v[:, 0].detach().requires_grad_() for k, v in token.items()}
    return {"token": token, "decoder": branch(queries) | {"aux": [branch(queries) for _ in range(layers - 1)]}}


def test_build_criterion_picks_the_heads_loss():
    model = ModelConfig()
    assert isinstance(build_criterion(model, LossConfig()), GroundingCriterion)
    model.head.type = "simvg"
    assert isinstance(build_criterion(model, LossConfig()), SimVGCriterion)


def test_every_loss_has_its_weight_and_aux_layers_their_own():
    criterion = SimVGCriterion(LossConfig(), decoder_layers=3)
    losses, stats = criterion(outputs(), [torch.tensor([[0.5, 0.5, 0.2, 0.2]]), torch.zeros(0, 4)])
    assert set(losses) == set(criterion.weight_dict)
    assert {k for k in losses if k.startswith("loss_dec_ce")} == {"loss_dec_ce", "loss_dec_ce_0", "loss_dec_ce_1"}
    assert criterion.weight_dict["loss_tok_l1"] == 2.0 * 5.0 and criterion.weight_dict["loss_tok_kd_giou"] == 1.0 * 2.0
    total = criterion.total(losses).detach()
    expected = sum(float(losses[k].detach()) * criterion.weight_dict[k] for k in losses)
    assert float(total) == pytest.approx(expected, rel=1e-5)
    assert 0.0 <= stats["dwbd_weight"] <= 1.0
    no_aux = SimVGCriterion(LossConfig(aux=False), decoder_layers=3)
    assert "loss_dec_ce_0" not in no_aux.weight_dict


def test_empty_target_sets_train_only_no_object():
    """A batch whose phrases name nothing: no box loss, no DWBD, and every prediction's class
    loss is -log P(no object) (all predictions weigh the same)."""
    criterion = SimVGCriterion(LossConfig(), decoder_layers=3)
    out = outputs()
    losses, stats = criterion(out, [torch.zeros(0, 4), torch.zeros(0, 4)])
    for key, value in losses.items():
        if "_l1" in key or "_giou" in key:
            assert value.detach().item() == 0.0, key
    no_object = -out["decoder"]["logits"].log_softmax(-1)[..., 1].mean()
    assert losses["loss_dec_ce"].detach().item() == pytest.approx(no_object.detach().item(), rel=1e-5)
    assert stats["dwbd_weight"] == 0.0
    criterion.total(losses).backward()
    assert float(out["decoder"]["boxes"].grad.abs().max()) == 0.0
    assert float(out["decoder"]["logits"].grad.abs().max()) > 0.0


def test_tensor_targets_are_one_box_sets():
    criterion = SimVGCriterion(LossConfig(), decoder_layers=3)
    targets = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.6, 0.1, 0.3]])
    a, _ = criterion(outputs(), targets)
    b, _ = criterion(outputs(), [t[None] for t in targets])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_right_predictions_cost_nothing_and_teach_the_token_branch_fully():
    targets = [torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.2, 0.3, 0.1, 0.1]]), torch.tensor([[0.7, 0.4, 0.3, 0.2]])]
    out = outputs(queries=3)
    with torch.no_grad():
        out["decoder"]["boxes"][0, 2] = targets[0][0]
        out["decoder"]["boxes"][0, 0] = targets[0][1]
        out["decoder"]["boxes"][1, 1] = targets[1][0]
        out["decoder"]["logits"][:] = torch.tensor([-9.0, 9.0])
        for image, query in ((0, 2), (0, 0), (1, 1)):
            out["decoder"]["logits"][image, query] = torch.tensor([9.0, -9.0])
    losses, stats = SimVGCriterion(LossConfig(), decoder_layers=3)(out, targets)
    assert float(losses["loss_dec_l1"].detach()) == pytest.approx(0.0, abs=1e-5)
    assert losses["loss_dec_giou"].detach().item() == pytest.approx(0.0, abs=1e-5)
    assert losses["loss_dec_ce"].detach().item() == pytest.approx(0.0, abs=1e-3)
    assert stats["dwbd_weight"] == pytest.approx(1.0, abs=1e-3)  # fg ~1 x IoU 1
    # w = 1: the token branch learns from the decoder's boxes only.
    assert float(losses["loss_tok_l1"].detach()) == pytest.approx(0.0, abs=1e-3)


def test_dwbd_weight_is_the_mean_over_matched_pairs_of_fg_times_iou():
    targets = [torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.2, 0.3, 0.1, 0.1]]), torch.tensor([[0.7, 0.4, 0.3, 0.2]])]
    out = outputs(queries=2, seed=3)
    criterion = SimVGCriterion(LossConfig(), decoder_layers=3)
    _, stats = criterion(out, targets)
    from simvg.models.matcher import hungarian_match

    matches = hungarian_match(out["decoder"]["logits"], out["decoder"]["boxes"], targets)
    pairs = []
    for i, (pred, goal) in enumerate(matches):
        fg = out["decoder"]["logits"][i, pred].softmax(-1)[:, 0]
        pairs += (fg * paired_iou(out["decoder"]["boxes"][i, pred], targets[i][goal])).tolist()
    assert len(pairs) == 3
    assert stats["dwbd_weight"] == pytest.approx(sum(pairs) / 3, rel=1e-5)


def test_box_losses_are_averaged_over_the_batchs_target_boxes():
    targets = [torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.2, 0.3, 0.1, 0.1]]), torch.zeros(0, 4)]
    out = outputs(queries=4, seed=5)
    losses, _ = SimVGCriterion(LossConfig(aux=False, dwbd=False), decoder_layers=3)(out, targets)
    from simvg.models.matcher import hungarian_match

    pred, goal = hungarian_match(out["decoder"]["logits"], out["decoder"]["boxes"], targets)[0]
    l1 = (out["decoder"]["boxes"][0, pred] - targets[0][goal]).abs().sum() / 2
    assert float(losses["loss_dec_l1"].detach()) == pytest.approx(float(l1.detach()), rel=1e-5)


def test_iou_score_target_asks_the_matched_query_for_its_iou():
    """With score_target "iou", a matched query whose object probability already equals its
    box's IoU with the target gets no class gradient; one that is more confident is pushed down."""
    target = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    box = torch.tensor([[[0.52, 0.5, 0.2, 0.25]]])
    iou = float(paired_iou(box[0], target))
    criterion = SimVGCriterion(LossConfig(score_target="iou", aux=False), decoder_layers=1)
    grads = []
    for probability in (iou, 0.99):
        logits = torch.tensor([[[torch.logit(torch.tensor(probability)).detach().item(), 0.0]]], requires_grad=True)
        out = {"token": {"logits": torch.zeros(1, 2), "boxes": box[:, 0]},
               "decoder": {"logits": logits, "boxes": box, "aux": []}}  # fmt: skip
        losses, _ = criterion(out, [target])
        (grad,) = torch.autograd.grad(losses["loss_dec_ce"], logits)
        grads.append(float(grad[0, 0, 0]))
    assert abs(grads[0]) < 1e-5 and grads[1] > 0.1
