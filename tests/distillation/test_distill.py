"""``simvg distill``: a cheaper student from a teacher checkpoint, one or several teachers."""

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from distill.cheap_conv import count_parameters
from simvg import Grounder
from simvg.cli import main
from simvg.config import load_config
from simvg.distillation.student import build_student
from simvg.engine.checkpoint import load_checkpoint
from tests.conftest import ROOT

DISTILL_TINY = ROOT / "configs" / "distill_synthref_tiny.yaml"


def distill(teachers, data_root, output, *extra):
    args = ["distill", str(DISTILL_TINY), "--data-root", str(data_root), "--output", str(output), "--quiet"]
    for teacher in teachers:
        args += ["--teacher", str(teacher)]
    return main(args + list(extra))


@pytest.fixture(scope="module")
def second_teacher(tiny_run, synthref_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher2") / "run"
    config = ROOT / "configs" / "synthref_tiny.yaml"
    args = ["train", str(config), "--data-root", str(synthref_root), "--output", str(out), "--quiet",
            "--set", "train.seed=7", "--set", "data.train_expression_types=[relation, comparison]"]  # fmt: skip
    assert main(args) == 0
    return out / "last"


def test_student_is_the_teacher_made_cheaper_and_starts_from_its_weights(tiny_run):
    teacher, _, teacher_config, meta = load_checkpoint(tiny_run / "last")
    base = load_config(DISTILL_TINY)
    student, config, backbone = build_student(teacher, teacher_config, meta["backbone_config"], meta["vocab_size"], base)
    assert backbone["num_hidden_layers"] == 1 and config.model.encoder.layers == [1]
    assert config.model.head.token_branches == 2 and not config.model.head.use_decoder
    assert count_parameters(student) < count_parameters(teacher)
    # Student layer 0 is teacher layer 1; branch 0 of the ONE head is the teacher's token branch.
    assert torch.equal(student.encoder.layers[0].output.dense.weight, teacher.encoder.layers[1].output.dense.weight)
    assert torch.equal(student.token_head.one.branches[0].proj.weight, teacher.token_head.proj.weight)
    assert not torch.equal(student.token_head.one.branches[1].proj.weight, teacher.token_head.proj.weight)
    # The stem's 3x3 convolutions became depthwise-separable blocks.
    names = [type(m).__name__ for m in student.encoder.stem.modules()]
    assert "SeparableConv" in names
    # The factorised embedding approximates the teacher's.
    ids = torch.arange(100, 200)
    with torch.no_grad():
        err = (student.encoder.embeddings.word_embeddings(ids) - teacher.encoder.embeddings.word_embeddings(ids)).norm()
        assert float(err) < float(teacher.encoder.embeddings.word_embeddings(ids).norm())


def test_distilled_student_is_an_ordinary_checkpoint(tiny_run, synthref_root, tmp_path):
    assert distill([tiny_run / "last"], synthref_root, tmp_path / "student") == 0
    for name in ("last", "best"):
        assert (tmp_path / "student" / name / "model.safetensors").is_file()
    grounder = Grounder.from_pretrained(tmp_path / "student" / "last", device="cpu")
    assert grounder.branches == ("token",)
    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    single = grounder.predict(image, "the red star")
    grounder.model.token_head.deploy_branch = None  # the gated ensemble instead of branch 0
    ensemble = grounder.predict(image, "the red star")
    assert len(single.box) == 4 and len(ensemble.box) == 4
    with open(tmp_path / "student" / "train_log.csv") as f:
        header = f.readline()
    for loss in ("loss_gt_l1", "loss_one_cells", "loss_one_l1", "loss_cell_kd", "loss_box_kd_l1", "loss_at", "loss_mimic"):
        assert loss in header

    # Export keeping only the deployed branch: fewer parameters, the same box, reloads as a
    # plain single-branch model.
    exported = tmp_path / "branch0"
    assert main(["export", str(tmp_path / "student" / "last"), str(exported), "--keep-branch", "0"]) == 0
    slim = Grounder.from_pretrained(exported, device="cpu")
    assert slim.config.model.head.token_branches == 1
    assert count_parameters(slim.model) < count_parameters(grounder.model)
    assert np.allclose(slim.predict(image, "the red star").box, single.box, atol=1e-3)
    assert main(["export", str(exported), str(tmp_path / "again"), "--keep-branch", "0"]) == 2


@pytest.mark.parametrize("objective", ["full", "teacher"])
def test_distillation_resumes_exactly(tiny_run, synthref_root, tmp_path, objective):
    # The "teacher" objective's start model is rebuilt on resume: the same self-regularisation target.
    sets = ["--set", f"distill.objective={objective}"]
    assert distill([tiny_run / "last"], synthref_root, tmp_path / "straight", *sets) == 0
    assert distill([tiny_run / "last"], synthref_root, tmp_path / "resumed", "--stop-after", "4", *sets) == 0
    assert distill([tiny_run / "last"], synthref_root, tmp_path / "resumed", "--resume", *sets) == 0
    a = load_file(str(tmp_path / "straight" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "last" / "model.safetensors"))
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_takfl_merges_students_distilled_from_each_teacher(tiny_run, second_teacher, synthref_root, tmp_path):
    assert distill([tiny_run / "last", second_teacher], synthref_root, tmp_path / "takfl") == 0
    run = tmp_path / "takfl"
    assert (run / "teacher0" / "last").is_dir() and (run / "teacher1" / "last").is_dir()
    # Each per-teacher run distils from its teacher alone, without ground truth.
    for j in (0, 1):
        saved = json.loads((run / f"teacher{j}" / "last" / "config.json").read_text())
        assert saved["config"]["distill"]["objective"] == "teacher"
        with open(run / f"teacher{j}" / "train_log.csv") as f:
            header = f.readline().strip().split(",")
        assert "loss_takfl_cells" in header and "loss_box_kd_l1" in header
        assert not [c for c in header if c.startswith(("loss_gt", "loss_tok_ref", "loss_one", "loss_at", "loss_mimic"))]
    meta = json.loads((run / "last" / "config.json").read_text())
    lambdas = meta["lambdas"]
    assert meta["merge"] == "takfl" and len(lambdas) == 2 and min(lambdas) >= 0 and sum(lambdas) == pytest.approx(1)
    assert len(meta["lambda_scores"]) == 1 + 3 * 2  # uniform + the tiny recipe's 2 random points per exponent
    # θ = θ0 + Σ λ_j (θ_j − θ0), with θ0 the shared start: the student as built from the first teacher.
    teacher, _, teacher_config, teacher_meta = load_checkpoint(tiny_run / "last")
    start = build_student(teacher, teacher_config, teacher_meta["backbone_config"], teacher_meta["vocab_size"],
                          load_config(DISTILL_TINY))[0].state_dict()  # fmt: skip
    merged = load_file(str(run / "last" / "model.safetensors"))
    ends = [load_file(str(run / f"teacher{j}" / "last" / "model.safetensors")) for j in (0, 1)]
    assert merged.keys() == ends[0].keys()
    for name, value in merged.items():
        if value.is_floating_point():
            expected = start[name] + sum(lam * (end[name] - start[name]) for lam, end in zip(lambdas, ends))
            assert torch.allclose(value, expected, atol=1e-5), name
    Grounder.from_pretrained(run / "last", device="cpu")


@pytest.mark.parametrize("mode", ["tuned", "uniform"])
def test_takfl_lambdas_tuned_or_uniform_lie_on_the_simplex(tiny_run, second_teacher, synthref_root, tmp_path, mode):
    assert distill([tiny_run / "last", second_teacher], synthref_root, tmp_path / "takfl",
                   "--set", f"distill.merge_lambdas={mode}") == 0  # fmt: skip
    lambdas = json.loads((tmp_path / "takfl" / "last" / "config.json").read_text())["lambdas"]
    assert len(lambdas) == 2 and min(lambdas) >= 0 and sum(lambdas) == pytest.approx(1)
    if mode == "uniform":
        assert lambdas == [0.5, 0.5]


def test_takfl_is_refused_with_the_ground_truth_objective(tiny_run, second_teacher, synthref_root, tmp_path, capsys):
    assert distill([tiny_run / "last", second_teacher], synthref_root, tmp_path / "takfl",
                   "--set", "distill.objective=full") == 2  # fmt: skip
    assert "distill.objective=teacher" in capsys.readouterr().err
    assert not (tmp_path / "takfl" / "teacher0").exists()


@pytest.mark.parametrize("objective", ["full", "teacher"])
def test_averaged_teachers_baseline_is_one_run(tiny_run, second_teacher, synthref_root, tmp_path, objective):
    assert distill([tiny_run / "last", second_teacher], synthref_root, tmp_path / "avg",
                   "--set", "distill.merge=average", "--set", f"distill.objective={objective}") == 0  # fmt: skip
    assert (tmp_path / "avg" / "last").is_dir() and not (tmp_path / "avg" / "teacher0").exists()


def test_bad_teacher_is_named(tiny_run, synthref_root, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_run / "last", broken)
    (broken / "config.json").unlink()
    assert distill([broken], synthref_root, tmp_path / "out") == 2
    assert "missing config.json" in capsys.readouterr().err


def test_stem_pretraining_is_refused_for_a_student(tiny_run, synthref_root, tmp_path, capsys):
    assert distill([tiny_run / "last"], synthref_root, tmp_path / "out", "--set", "train.stem_pretrain_steps=5") == 2
    assert "train.stem_pretrain_steps" in capsys.readouterr().err


def test_scratch_baseline_starts_from_the_pretrained_encoder_not_from_random_weights():
    from simvg.models import build_model

    teacher_config = load_config(ROOT / "configs" / "synthref_tiny.yaml", ["model.encoder.pretrained=minilm-l6"])
    teacher = build_model(teacher_config.model, 30522)
    backbone = teacher.encoder.hf_config.to_dict()
    base = load_config(DISTILL_TINY, ["distill.init_from_teacher=false", "distill.student_layers=[0, 5]"])
    student, config, _ = build_student(teacher, teacher_config, backbone, 30522, base)
    reference = build_model(config.model, 30522)  # what a model trained directly would start from
    for mine, pretrained in zip(student.encoder.layers, reference.encoder.layers):
        assert torch.equal(mine.output.dense.weight, pretrained.output.dense.weight)


def test_student_keeps_the_teachers_first_query_generator_layers():
    from simvg.models import build_model

    teacher_config = load_config(ROOT / "configs" / "synthref_tiny.yaml", ["model.head.tqg_layers=2"])
    teacher = build_model(teacher_config.model, 30522)
    backbone = teacher.encoder.hf_config.to_dict()
    base = load_config(DISTILL_TINY, ["distill.query_layers=1"])
    student, config, _ = build_student(teacher, teacher_config, backbone, 30522, base)
    assert config.model.head.tqg_layers == 1 and len(student.query_generator.decoder.layers) == 1
    kept, first = student.query_generator.decoder.layers[0], teacher.query_generator.decoder.layers[0]
    assert torch.equal(kept.linear1.weight, first.linear1.weight)
    assert count_parameters(student.query_generator) < count_parameters(teacher.query_generator)
    with pytest.raises(ValueError, match="distill.query_layers 3"):
        build_student(teacher, teacher_config, backbone, 30522, load_config(DISTILL_TINY, ["distill.query_layers=3"]))



@pytest.mark.parametrize("relation,pointer,kept", [(False, "token", False), (True, "token", False), (True, "words", True)])
def test_the_landmark_supervision_reaches_only_a_students_words_pointer(relation, pointer, kept):
    from simvg.distillation.student import student_config

    teacher_config = load_config(ROOT / "configs" / "synthref_tiny.yaml",
                                 [f"model.head.landmark_relation={str(relation).lower()}",
                                  f"model.head.landmark_pointer={pointer}"])  # fmt: skip
    base = load_config(DISTILL_TINY, ["loss.landmark_ref=5"])  # as the shipped student's recipe
    config = student_config(teacher_config, [0], base)
    assert config.model.head.landmark_pointer == pointer
    assert config.loss.landmark_ref == (5.0 if kept else 0.0)

def test_stem_hints_fit_the_cheap_stem_to_the_teachers_stem(tiny_run, synthref_root):
    from simvg.distillation.stem_hint import fit_student_stem, needs_stem_hints
    from simvg.engine.tasks import build_datasets

    teacher, tokenizer, teacher_config, meta = load_checkpoint(tiny_run / "last")
    base = load_config(DISTILL_TINY, ["distill.stem_hint_steps=40", "distill.stem_hint_lr=5e-3"])
    student, config, _ = build_student(teacher, teacher_config, meta["backbone_config"], meta["vocab_size"], base)
    assert needs_stem_hints(config, teacher_config)
    copied = load_config(DISTILL_TINY, ["distill.stem_hint_steps=40", "distill.stem_conv=Conv"])
    assert not needs_stem_hints(build_student(teacher, teacher_config, meta["backbone_config"], meta["vocab_size"],
                                              copied)[1], teacher_config)  # fmt: skip
    train_set, _ = build_datasets(config, synthref_root, tokenizer)
    layers_before = {k: v.clone() for k, v in student.encoder.layers.state_dict().items()}
    losses = fit_student_stem(student, teacher, train_set, config, torch.device("cpu"), tokenizer.pad_token_id, log=False)
    assert len(losses) == 40 and np.mean(losses[-5:]) < 0.8 * losses[0]
    # Only the stem moved.
    assert all(torch.equal(v, student.encoder.layers.state_dict()[k]) for k, v in layers_before.items())

    narrow = load_config(DISTILL_TINY, ["distill.stem_hint_steps=2", "distill.stem_channels=[4, 8, 8, 16]"])
    student, config, _ = build_student(teacher, teacher_config, meta["backbone_config"], meta["vocab_size"], narrow)
    with pytest.raises(ValueError, match="teacher's stem widths"):
        fit_student_stem(student, teacher, train_set, config, torch.device("cpu"), tokenizer.pad_token_id)


@pytest.mark.parametrize("objective", ["full", "teacher"])
def test_distillation_with_stem_hints_resumes_exactly(tiny_run, synthref_root, tmp_path, objective):
    hint = ["--set", "distill.stem_hint_steps=3", "--set", f"distill.objective={objective}"]
    assert distill([tiny_run / "last"], synthref_root, tmp_path / "straight", *hint) == 0
    assert distill([tiny_run / "last"], synthref_root, tmp_path / "resumed", "--stop-after", "4", *hint) == 0
    assert distill([tiny_run / "last"], synthref_root, tmp_path / "resumed", "--resume", *hint) == 0
    a = load_file(str(tmp_path / "straight" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "last" / "model.safetensors"))
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_takfl_checks_its_teachers_and_settings_before_any_work(tiny_run, synthref_root, tmp_path, capsys):
    from simvg.distillation.run import check_teachers_agree, load_teachers
    from simvg.engine.checkpoint import save_checkpoint
    from simvg.models import build_model

    teacher = Grounder.from_pretrained(tiny_run / "last", device="cpu")
    wider = copy.deepcopy(teacher.config)
    wider.model.head.hidden_dim *= 2  # another architecture
    save_checkpoint(tmp_path / "wider", build_model(wider.model, len(teacher.tokenizer), teacher.backbone_config),
                    wider, teacher.backbone_config, teacher.tokenizer)  # fmt: skip
    assert distill([tiny_run / "last", tmp_path / "wider"], synthref_root, tmp_path / "takfl") == 2
    assert "need one architecture" in capsys.readouterr().err
    # Settings that change no weight do not make another architecture.
    other = tmp_path / "other"
    shutil.copytree(tiny_run / "last", other)
    meta = json.loads((other / "config.json").read_text())
    meta["config"]["model"]["head"]["reference_window"] = 3
    meta["config"]["model"]["encoder"]["attention"] = "sdpa"
    (other / "config.json").write_text(json.dumps(meta))
    check_teachers_agree(load_teachers([str(tiny_run / "last"), str(other)]), "takfl")
    assert distill([tiny_run / "last"], synthref_root, tmp_path / "bogus", "--set", "distill.merge_lambdas=bogus") == 2
    assert "distill.merge_lambdas" in capsys.readouterr().err
    assert distill([tiny_run / "last"], synthref_root, tmp_path / "bogus", "--set", "model.image_size=96",
                   "--set", "model.encoder.attention=sdpa") == 2  # fmt: skip
    assert "model.* settings are not used: remove model.image_size, model.encoder.attention" in capsys.readouterr().err
    assert not (tmp_path / "takfl").exists() and not (tmp_path / "bogus").exists()


def test_an_interrupted_takfl_run_is_neither_restarted_nor_resumed_with_other_teachers(
    tiny_run, second_teacher, synthref_root, tmp_path, capsys
):
    teachers = [tiny_run / "last", second_teacher]
    assert distill(teachers, synthref_root, tmp_path / "takfl", "--stop-after", "1") == 0
    assert (tmp_path / "takfl" / "teacher0" / "last").is_dir()
    assert distill(teachers, synthref_root, tmp_path / "takfl") == 2  # without --resume
    assert "--resume" in capsys.readouterr().err
    assert distill(teachers[::-1], synthref_root, tmp_path / "takfl", "--resume") == 2
    assert "was distilled from" in capsys.readouterr().err
