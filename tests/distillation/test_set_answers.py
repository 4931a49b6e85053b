"""Students with several answers: a teacher whose every cell answers with its own score (a
"cells" head with several queries) gives a student that answers the same way, and the
distillation objectives train it on phrases with no, one or several targets (SynthRef-G)."""

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch

from distill.losses import joint_kd_loss
from simvg import Grounder
from simvg.cli import main
from simvg.config import load_config
from simvg.data.dataset import Collator
from simvg.data.readers import load_records
from simvg.distillation.loss import DistillationLoss, answer_cells
from simvg.distillation.student import build_student
from simvg.engine.checkpoint import load_checkpoint
from simvg.engine.tasks import build_datasets
from simvg.models.criterion import positive_cells
from simvg.models.heads.token_branch import TokenBranch
from tests.conftest import ROOT, TINY_CONFIG

DISTILL_TINY = ROOT / "configs" / "distill_synthref_tiny.yaml"
SYNTHREF_G = ["data.dataset=synthref-g"]
# Every cell of the tiny teacher that is not padding answers: box KD has answers to regress
# whatever the few training steps taught the teacher's scores.
EVERY_CELL = "distill.box_kd_threshold=1e-6"
# The student its teacher is: the same layers and stem, one branch, no stem or token losses.
SAME = ("distill.student_layers=[0, 1]", "distill.stem_conv=Conv", "distill.embedding_rank=null",
        "distill.token_branches=1", "distill.teacher_branch=token", "distill.attention_transfer=0",
        "distill.feature_mimic=0")  # fmt: skip


@pytest.fixture(scope="module")
def synthref_g_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthref_g")
    args = ["synth", "--generalized", "--out", str(root), "--train", "24", "--val", "8", "--testA", "0",
            "--testB", "0", "--image-size", "96", "--seed", "0"]  # fmt: skip
    assert main(args) == 0
    return root


@pytest.fixture(scope="module")
def set_teacher(synthref_g_root, tmp_path_factory):
    """A tiny "cells" teacher with several queries (every cell answers), 8 steps on SynthRef-G."""
    out = tmp_path_factory.mktemp("set_teacher") / "run"
    args = ["train", str(TINY_CONFIG), "--data-root", str(synthref_g_root), "--output", str(out), "--quiet",
            "--set", "data.dataset=synthref-g", "--set", "model.head.num_queries=3"]  # fmt: skip
    assert main(args) == 0
    return out / "last"


def make_loss(teacher_dir, data_root, *overrides: str):
    """(DistillationLoss, student, a batch of 3 training phrases whose target sets have 0, 1 and 3 boxes)."""
    teacher, tokenizer, teacher_config, meta = load_checkpoint(teacher_dir)
    base = load_config(DISTILL_TINY, SYNTHREF_G + list(overrides))
    student, config, _ = build_student(teacher, teacher_config, meta["backbone_config"], meta["vocab_size"], base)
    train_set, _ = build_datasets(config, data_root, tokenizer)
    batch = Collator(tokenizer.pad_token_id)([train_set[i] for i in range(3)])
    sets = [torch.zeros(0, 4), torch.tensor([[0.3, 0.3, 0.2, 0.2]]),
            torch.tensor([[0.2, 0.7, 0.15, 0.1], [0.5, 0.5, 0.3, 0.2], [0.8, 0.2, 0.1, 0.3]])]  # fmt: skip
    batch = dataclasses.replace(batch, targets=None, target_sets=sets)
    start = copy.deepcopy(student) if config.distill.objective == "teacher" else None
    return DistillationLoss(student, [teacher], config, start_model=start), student, batch


def score_heads(student) -> list[torch.nn.Module]:
    head = student.token_head
    branches = head.one.branches if hasattr(head, "one") else [head]
    return [b.score_head for b in branches]


def gradients(module, student, batch) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)  # the same dropout masks every call
    module.zero_grad()
    total, _ = module(batch)
    total.backward()
    return {name: p.grad.clone() for name, p in student.named_parameters() if p.grad is not None}


def test_a_student_answers_as_its_teacher_does(set_teacher, tiny_run, synthref_g_root):
    teacher, _, teacher_config, meta = load_checkpoint(set_teacher)
    base = load_config(DISTILL_TINY, SYNTHREF_G)
    student, config, _ = build_student(teacher, teacher_config, meta["backbone_config"], meta["vocab_size"], base)
    assert config.model.head.num_queries == teacher_config.model.head.num_queries == 3
    _, _, batch = make_loss(set_teacher, synthref_g_root)
    student.eval()
    with torch.no_grad():
        out = student(batch.images, batch.pixel_mask, batch.input_ids, batch.text_mask)
        expected = teacher(batch.images, batch.pixel_mask, batch.input_ids, batch.text_mask)
    cells = out["grid"][0] * out["grid"][1]
    assert out["token"]["logits"].shape == expected["token"]["logits"].shape == (3, cells, 2)
    assert out["token"]["boxes"].shape == (3, cells, 4)
    # A teacher with one answer per phrase still gives a student with one.
    single, _, single_config, single_meta = load_checkpoint(tiny_run / "last")
    _, config, _ = build_student(single, single_config, single_meta["backbone_config"], single_meta["vocab_size"],
                                 load_config(DISTILL_TINY))  # fmt: skip
    assert config.model.head.num_queries == 1


@pytest.mark.parametrize("objective", ["full", "teacher"])
@pytest.mark.parametrize("branches", [1, 2])
def test_phrases_with_no_one_or_three_targets_train_the_cells_scores(set_teacher, synthref_g_root, objective, branches):
    module, student, batch = make_loss(set_teacher, synthref_g_root, f"distill.objective={objective}",
                                       f"distill.token_branches={branches}", EVERY_CELL)  # fmt: skip
    module.train()
    torch.manual_seed(0)
    total, logs = module(batch)
    expected = {"loss_box_kd_l1", "loss_box_kd_giou"}
    if objective == "full":
        expected |= {"loss_gt_ce", "loss_gt_l1", "loss_gt_giou", "loss_tok_ref", "loss_cell_kd", "loss_score_kd",
                     "loss_gt_presence"}  # fmt: skip
        expected |= {"loss_one_cells", "loss_one_scores", "loss_one_l1", "loss_one_giou"} if branches > 1 else set()
    else:
        expected |= {"loss_takfl_cells", "loss_takfl_scores"}
    assert expected <= set(logs)
    assert all(np.isfinite(v) for v in logs.values()) and torch.isfinite(total)
    assert logs["teacher_answers"] > 1  # every cell answers: box KD has targets
    total.backward()
    for score_head in score_heads(student):
        grad = score_head.layers[-1].weight.grad
        assert grad is not None and torch.isfinite(grad).all() and float(grad.abs().sum()) > 0
    for p in student.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


def test_a_student_identical_to_its_teacher_has_nothing_to_learn_from_it(set_teacher, synthref_g_root):
    module, student, batch = make_loss(set_teacher, synthref_g_root, *SAME)
    module.eval()  # no dropout: the student computes exactly what its teacher computes
    _, logs = module(batch)
    assert logs["loss_score_kd"] < 1e-5 and logs["loss_cell_kd"] < 1e-5
    teacher_objective, _, _ = make_loss(set_teacher, synthref_g_root, *SAME, "distill.objective=teacher")
    teacher_objective.eval()
    _, logs = teacher_objective(batch)
    assert logs["loss_takfl_scores"] < 1e-5 and logs["loss_takfl_cells"] < 1e-5
    # Scores that differ from the teacher's are taught back.
    with torch.no_grad():
        for p in student.token_head.score_head.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    _, logs = module(batch)
    assert logs["loss_score_kd"] > 1e-3


def test_teacher_answers_to_phrases_that_name_nothing_teach_no_box(set_teacher, synthref_g_root):
    """With DWBD-style confidence an answer weighs its score x its IoU with the phrase's
    targets: a batch where no phrase has a target moves no box through box KD."""
    module, student, batch = make_loss(set_teacher, synthref_g_root, EVERY_CELL, "distill.token_branches=1")
    module.train()
    nothing = dataclasses.replace(batch, target_sets=[torch.zeros(0, 4) for _ in batch.target_sets])
    _, logs = module(nothing)
    assert logs["teacher_answers"] > 1 and logs["loss_box_kd_l1"] == 0.0 and logs["loss_box_kd_giou"] == 0.0
    _, logs = module(batch)  # the phrases with targets do
    assert logs["loss_box_kd_l1"] > 0.0


def test_takfls_per_teacher_objective_never_reads_the_target_sets(set_teacher, synthref_g_root):
    module, student, batch = make_loss(set_teacher, synthref_g_root, "distill.objective=teacher", EVERY_CELL)
    module.train()
    reference = gradients(module, student, batch)
    unlabelled = [
        dataclasses.replace(batch, target_sets=[torch.full_like(t, float("nan")) for t in batch.target_sets]),
        dataclasses.replace(batch, target_sets=batch.target_sets[::-1]),
        dataclasses.replace(batch, target_sets=None, meta=[{} for _ in batch.meta]),
    ]
    for other in unlabelled:
        grads = gradients(module, student, other)
        assert grads.keys() == reference.keys()
        for name, grad in grads.items():
            assert torch.allclose(grad, reference[name], rtol=1e-5, atol=1e-8), name
    # The recipe's objective does read them: the same comparison tells the two apart.
    full, student, batch = make_loss(set_teacher, synthref_g_root, EVERY_CELL)
    full.train()
    recipe = gradients(full, student, batch)
    shuffled = gradients(full, student, dataclasses.replace(batch, target_sets=batch.target_sets[::-1]))
    assert any(not torch.allclose(shuffled[n], g, rtol=1e-5, atol=1e-8) for n, g in recipe.items())


def test_box_kd_cells_lie_on_the_answer_they_regress():
    grid = (4, 4)
    answers = [torch.tensor([[0.3, 0.3, 0.5, 0.5], [0.8, 0.8, 0.3, 0.3]]), torch.zeros(0, 4),
               torch.tensor([[0.5, 0.5, 0.2, 0.2]])]  # fmt: skip
    samples, cells, goals, shares = answer_cells(answers, None, grid, torch.device("cpu"))
    assert set(samples.tolist()) == {0, 2}
    for i in (0, 2):
        mine = samples == i
        on = positive_cells(answers[i], grid)
        assert set(cells[mine].tolist()) == set(on.any(0).nonzero()[:, 0].tolist())  # every cell on an answer
        assert float(shares[mine].sum()) == pytest.approx(1.0)  # each sample weighs one
        for cell, goal in zip(cells[mine].tolist(), goals[mine]):
            index = (answers[i] == goal).all(dim=1).nonzero()[0, 0]
            assert on[index, cell]  # the cell lies on the answer it regresses
    weighted = answer_cells(answers, [torch.tensor([1.0, 0.0]), torch.zeros(0), torch.tensor([0.5])], grid,
                            torch.device("cpu"))  # fmt: skip
    second = (weighted[2] == answers[0][1]).all(dim=1)
    assert second.any() and float(weighted[3][second].abs().sum()) == 0.0  # an answer of weight 0 teaches nothing


def test_a_set_answer_student_distils_saves_and_predicts(set_teacher, synthref_g_root, tmp_path):
    counts = {len(r.boxes_xyxy) for r in load_records(synthref_g_root, "synthref-g", "train")}
    assert 0 in counts and 1 in counts and max(counts) >= 2
    out = tmp_path / "student"
    args = ["distill", str(DISTILL_TINY), "--teacher", str(set_teacher), "--data-root", str(synthref_g_root),
            "--output", str(out), "--quiet", "--set", "data.dataset=synthref-g"]  # fmt: skip
    assert main(args) == 0
    saved = json.loads((out / "last" / "config.json").read_text())["config"]
    assert saved["model"]["head"]["num_queries"] == 3
    with open(out / "train_log.csv") as f:
        header = f.readline().strip().split(",")
    assert {"loss_gt_ce", "loss_score_kd", "loss_cell_kd", "loss_one_scores", "loss_box_kd_l1"} <= set(header)
    with open(out / "eval_log.csv") as f:
        assert "f1_acc" in f.readline()  # the best checkpoint is chosen by F1-accuracy
    grounder = Grounder.from_pretrained(out / "last", device="cpu")
    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    result = grounder.predict(image, "all the red circles")
    x0, y0, x1, y1 = result.box
    assert 0 <= x0 <= x1 <= 70 and 0 <= y0 <= y1 <= 50 and 0.0 <= result.score <= 1.0


def test_takfl_merges_set_answer_students(set_teacher, synthref_g_root, tmp_path):
    args = ["distill", str(DISTILL_TINY), "--teacher", str(set_teacher), "--teacher", str(set_teacher),
            "--data-root", str(synthref_g_root), "--output", str(tmp_path / "takfl"), "--quiet",
            "--set", "data.dataset=synthref-g", "--set", "distill.merge_lambdas=tuned"]  # fmt: skip
    assert main(args) == 0
    meta = json.loads((tmp_path / "takfl" / "last" / "config.json").read_text())
    assert meta["merge"] == "takfl" and "val_f1_acc" in meta and sum(meta["lambdas"]) == pytest.approx(1)
    with open(tmp_path / "takfl" / "teacher0" / "train_log.csv") as f:
        header = f.readline().strip().split(",")
    assert "loss_takfl_scores" in header and not [c for c in header if c.startswith("loss_gt")]


def test_teachers_of_different_answer_modes_are_refused(set_teacher, tiny_run, synthref_g_root, tmp_path, capsys):
    args = ["distill", str(DISTILL_TINY), "--teacher", str(set_teacher), "--teacher", str(tiny_run / "last"),
            "--data-root", str(synthref_g_root), "--output", str(tmp_path / "mixed"), "--quiet",
            "--set", "data.dataset=synthref-g", "--set", "distill.merge=average"]  # fmt: skip
    assert main(args) == 2
    assert "answer" in capsys.readouterr().err


def test_the_teachers_cell_scores_alone_teach_which_cells_answer():
    """Score KD alone (no ground truth): a teacher calls the cells whose visual token carries a
    mark objects (probability 0.88) and the others not (0.05), 0 to 3 marks per image. A fresh
    student branch trained only on the teacher's per-cell probabilities answers (score >= 0.5)
    with exactly the marked cells, and the images without a mark, the phrases that name
    nothing, lose their answers: their highest score falls below 0.5."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    grid, dim = (4, 4), 16
    student = TokenBranch(dim, cell_scores=True)
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    every_cell = torch.ones(1, 16, dtype=torch.bool)

    def batch(size: int):
        visual = torch.randn(size, 16, dim, generator=generator)
        marked = torch.rand(size, 16, generator=generator) < torch.rand(size, 1, generator=generator) * 0.25
        visual[..., 0] = torch.where(marked, 2.0, -2.0)
        teacher = torch.stack([torch.where(marked, 2.0, -3.0), torch.zeros(size, 16)], dim=-1)
        return visual, marked, teacher

    def answers(size: int):
        visual, marked, teacher = batch(size)
        with torch.no_grad():
            out = student(torch.randn(size, dim), visual, every_cell.expand(size, -1), grid)
        return out["logits"].softmax(-1)[..., 0], marked, teacher.softmax(-1)[..., 0]

    before, marked, _ = answers(200)
    nothing = ~marked.any(1)
    assert nothing.sum() > 10 and marked.sum() > 200
    for _ in range(250):
        visual, _, teacher = batch(32)
        out = student(torch.randn(32, dim), visual, every_cell.expand(32, -1), grid)
        optimizer.zero_grad()
        joint_kd_loss(out["logits"], teacher, 1.0).backward()
        optimizer.step()
    after, marked, taught = answers(200)
    nothing = ~marked.any(1)
    exact = float(((after >= 0.5) == marked).all(1).float().mean())
    assert exact > 0.9, exact
    assert float(after[nothing].max(1).values.mean()) < min(0.5, float(before.max(1).values.mean()))
    assert float((after - taught).abs().mean()) < 0.05  # the probabilities themselves, not only the answers
