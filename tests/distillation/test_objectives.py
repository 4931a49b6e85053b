"""The student's objectives: ONE and KD on the token branch's distribution over cells, and
TAKFL's per-teacher objective (no ground truth, self-regularised)."""

import copy
import dataclasses

import pytest
import torch

from distill.losses import kd_loss
from simvg.config import load_config
from simvg.data.dataset import Collator
from simvg.distillation.loss import DistillationLoss, cell_kd_loss
from simvg.distillation.student import build_student
from simvg.engine.checkpoint import load_checkpoint
from simvg.engine.tasks import build_datasets
from tests.conftest import ROOT

DISTILL_TINY = ROOT / "configs" / "distill_synthref_tiny.yaml"


def make_loss(tiny_run, synthref_root, *overrides: str):
    """(DistillationLoss, student, teacher, a training batch of 4) for the tiny recipe."""
    teacher, tokenizer, teacher_config, meta = load_checkpoint(tiny_run / "last")
    base = load_config(DISTILL_TINY, list(overrides))
    student, config, _ = build_student(teacher, teacher_config, meta["backbone_config"], meta["vocab_size"], base)
    train_set, _ = build_datasets(config, synthref_root, tokenizer)
    batch = Collator(tokenizer.pad_token_id)([train_set[i] for i in range(4)])
    start = copy.deepcopy(student) if config.distill.objective == "teacher" else None
    return DistillationLoss(student, [teacher], config, start_model=start), student, teacher, batch


def gradients(module, student, batch) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)  # the same dropout masks every call
    module.zero_grad()
    total, _ = module(batch)
    total.backward()
    return {name: p.grad.clone() for name, p in student.named_parameters() if p.grad is not None}


def test_takfls_per_teacher_objective_never_reads_the_ground_truth(tiny_run, synthref_root):
    module, student, _, batch = make_loss(tiny_run, synthref_root, "distill.objective=teacher")
    module.train()
    _, logs = module(batch)
    assert set(logs) == {"loss_takfl_cells", "loss_box_kd_l1", "loss_box_kd_giou"}
    reference = gradients(module, student, batch)
    unlabelled = [
        dataclasses.replace(batch, targets=torch.full_like(batch.targets, float("nan"))),  # any use would spread NaN
        dataclasses.replace(batch, targets=batch.targets.flip(0)),
        dataclasses.replace(batch, targets=None, meta=[{} for _ in batch.meta]),  # no boxes, no annotations
    ]
    for other in unlabelled:
        grads = gradients(module, student, other)
        assert grads.keys() == reference.keys()
        for name, grad in grads.items():
            assert torch.allclose(grad, reference[name], rtol=1e-5, atol=1e-8), name

    # The recipe's objective does read them: the same comparison tells the two apart.
    full, student, _, batch = make_loss(tiny_run, synthref_root)
    full.train()
    recipe = gradients(full, student, batch)
    shuffled = gradients(full, student, dataclasses.replace(batch, targets=batch.targets.flip(0)))
    assert any(not torch.allclose(shuffled[n], g, rtol=1e-5, atol=1e-8) for n, g in recipe.items())


def test_self_regularisation_is_zero_at_the_start_weights(tiny_run, synthref_root):
    module, student, _, batch = make_loss(tiny_run, synthref_root, "distill.objective=teacher")
    module.eval()  # no dropout: the student at its start weights predicts exactly its start predictions
    student.token_head.deploy_branch = None  # every ONE branch, as in training
    d = module.config.distill
    d.self_regularization = 0.0
    _, without = module(batch)
    d.self_regularization = 0.01
    _, with_self = module(batch)
    assert with_self["loss_takfl_cells"] == pytest.approx(without["loss_takfl_cells"], rel=1e-5, abs=1e-6)
    # Away from the start, it pulls back.
    with torch.no_grad():
        for p in student.token_head.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    _, moved_with = module(batch)
    d.self_regularization = 0.0
    _, moved_without = module(batch)
    assert moved_with["loss_takfl_cells"] > moved_without["loss_takfl_cells"]


def test_cell_kd_is_zero_for_a_student_that_predicts_the_teachers_cells(tiny_run, synthref_root):
    same = ("distill.student_layers=[0, 1]", "distill.stem_conv=Conv", "distill.embedding_rank=null",
            "distill.token_branches=1", "distill.teacher_branch=token", "distill.attention_transfer=0",
            "distill.feature_mimic=0")  # fmt: skip
    module, student, teacher, batch = make_loss(tiny_run, synthref_root, *same)
    module.eval()
    _, logs = module(batch)
    assert logs["loss_cell_kd"] < 1e-5
    # A cheaper student does not.
    cheaper, _, _, batch = make_loss(tiny_run, synthref_root)
    cheaper.eval()
    assert cheaper(batch)[1]["loss_cell_kd"] > 1e-4  # ten times the bound above (the value depends on the tiny teacher's 8 steps)


def test_ones_kl_reads_the_branches_distributions_over_cells(tiny_run, synthref_root):
    module, student, _, batch = make_loss(tiny_run, synthref_root, "distill.one_rampup_fraction=0")
    branches = student.token_head.one.branches
    branches[1].load_state_dict(branches[0].state_dict())
    module.train()
    torch.manual_seed(0)
    _, logs = module(batch)
    assert logs["loss_one_cells"] < 1e-6  # identical branches: the ensemble is each of them
    with torch.no_grad():
        branches[1].key.weight.add_(torch.randn_like(branches[1].key.weight))
    torch.manual_seed(0)
    _, logs = module(batch)
    assert logs["loss_one_cells"] > 1e-3
    # The ensemble is a detached target: the gate learns from the ground truth, not from ONE's KL.
    module.zero_grad()
    d = module.config.distill  # ONE's KL alone
    for key in ("gt", "one_box", "cell_kd", "box_kd", "attention_transfer", "feature_mimic"):
        setattr(d, key, 0.0)
    module.config.loss.token_ref = 0.0
    torch.manual_seed(0)
    total, _ = module(batch)
    total.backward()
    assert student.token_head.one.gate[0].weight.grad is None or not student.token_head.one.gate[0].weight.grad.any()


LOWEST = torch.finfo(torch.float32).min


def test_cell_kd_with_a_landmark_relation_distils_both_stages():
    # (B, 2, N): the object token's own attention logits, then the final ones, float32's
    # lowest on the cells the relation left out.
    teacher = torch.tensor([[[4.0, 0.0, 1.0, 0.0], [4.5, LOWEST, 2.0, LOWEST]],
                            [[0.0, 3.0, 0.0, 2.5], [LOWEST, 3.5, LOWEST, 2.0]]])  # fmt: skip
    assert cell_kd_loss(teacher.clone(), teacher, 3.0).item() == pytest.approx(0.0, abs=1e-6)

    # Sample 0 of this student leaves out the teacher's best cell; sample 1 keeps both of its cells.
    content = torch.tensor([[0.0, 4.0, 0.0, 1.0], [0.0, 2.0, 0.0, 3.0]], requires_grad=True)
    final = torch.tensor([[LOWEST, 4.0, LOWEST, 1.5], [LOWEST, 2.5, 0.5, 3.0]], requires_grad=True)
    loss = cell_kd_loss(torch.stack([content, final], dim=1), teacher, 3.0)
    loss.backward()
    own = kd_loss(content.detach(), teacher[:, 0], 3.0)
    kept = kd_loss(final.detach()[1:], teacher[1:, 1], 3.0) * 0.5  # one sample of two
    assert loss.item() == pytest.approx((own + kept).item(), rel=1e-5)
    # Descent raises the student's own attention on the cell it left out ...
    assert content.grad[0, 0] < 0
    # ... and the final KL of that sample, which could only fall by spreading the student's
    # kept logits apart, moves nothing.
    assert torch.count_nonzero(final.grad[0]) == 0
    assert torch.count_nonzero(final.grad[1]) > 0


def test_cell_kd_without_a_landmark_relation_is_plain_kd():
    student, teacher = torch.randn(3, 5), torch.randn(3, 5)
    assert torch.equal(cell_kd_loss(student, teacher, 3.0), kd_loss(student, teacher, 3.0))
    # A teacher with the relation and a student without: their final distributions.
    stacked = torch.stack([torch.randn(3, 5), teacher], dim=1)
    assert torch.equal(cell_kd_loss(student, stacked, 3.0), kd_loss(student, teacher, 3.0))
