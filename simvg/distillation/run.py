"""``simvg distill``: one teacher, several teachers averaged, or several teachers merged (TAKFL)."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from distill.takfl import (
    heuristic_lambdas,
    merge_task_vectors,
    select_lambdas,
    task_vector,
    tune_lambdas,
    uniform_lambdas,
)
from simvg.config import Config, ModelConfig, to_dict
from simvg.distillation.loss import DistillationLoss
from simvg.distillation.stem_hint import fit_student_stem, needs_stem_hints
from simvg.distillation.student import build_student, several_answers
from simvg.engine.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from simvg.engine.distributed import DistributedContext, cleanup_distributed, setup_distributed
from simvg.engine.evaluate import evaluation_loader, predict_split, selection_score, summarize
from simvg.engine.tasks import build_auxiliary_losses, build_datasets, quiet_transformers
from simvg.engine.train import TrainingTask, fit
from simvg.models.criterion import GroundingCriterion, box_losses, reference_loss


def load_teachers(paths: list[str]) -> list[dict]:
    teachers = []
    for path in paths:
        model, tokenizer, config, meta = load_checkpoint(path)
        teachers.append({"path": str(path), "model": model, "tokenizer": tokenizer, "config": config, "meta": meta})
    vocabularies = {t["meta"]["vocab_size"] for t in teachers}
    if len(vocabularies) > 1:
        raise ValueError(f"teachers use different vocabularies ({sorted(vocabularies)} tokens): they must share a tokenizer")
    return teachers


def check_teachers_agree(teachers: list[dict], merge: str) -> None:
    """Several teachers must see the same images (one image size) and answer alike (one box per
    phrase, or several); for TAKFL, whose per-teacher students are merged weight by weight,
    they must also have the same weights' names and shapes (settings that change no weight,
    e.g. the attention kernel, may differ)."""
    first = teachers[0]
    shapes = {name: tuple(t.shape) for name, t in first["model"].state_dict().items()}
    for teacher in teachers[1:]:
        a, b = first["config"].model.image_size, teacher["config"].model.image_size
        if a != b:
            raise ValueError(f"teachers {first['path']} and {teacher['path']} take images of different sizes ({a} vs "
                             f"{b} px): distil from teachers trained alike")  # fmt: skip
        if several_answers(first["config"]) != several_answers(teacher["config"]):
            raise ValueError(f"teachers {first['path']} and {teacher['path']} answer differently (model.head.num_queries "
                             f"{first['config'].model.head.num_queries} vs {teacher['config'].model.head.num_queries}: "
                             f"one box per phrase, or several): distil from teachers of one answer mode")  # fmt: skip
        if merge != "takfl":
            continue
        other = {name: tuple(t.shape) for name, t in teacher["model"].state_dict().items()}
        if other != shapes:
            differ = sorted(set(shapes) ^ set(other)) or sorted(n for n in shapes if shapes[n] != other[n])
            raise ValueError(f"TAKFL merges students built from each teacher, so the teachers need one architecture; "
                             f"{first['path']} and {teacher['path']} differ (e.g. {differ[0]}): use "
                             f"distill.merge=average, or teachers of one recipe")  # fmt: skip


def check_takfl_output(directory: Path, teacher: dict) -> None:
    """A TAKFL per-teacher run in ``directory`` must come from ``teacher`` (not from another
    teacher given in another order). Paths are compared resolved; a recorded relative path
    that does not resolve from here cannot be judged and is let through."""
    config = directory / "last" / "config.json"
    if not config.is_file():
        return
    recorded = json.loads(config.read_text()).get("teachers")
    if not recorded:
        return
    then, now = Path(recorded[0]), Path(teacher["path"]).resolve()
    if (then.is_absolute() or then.exists()) and then.resolve() != now:
        raise ValueError(f"{directory} was distilled from {recorded[0]}, not {teacher['path']}: give the "
                         f"teachers in the order of the run being resumed, or choose another --output")  # fmt: skip


def distill_one(teachers: list[dict], base: Config, data_root: str, output: Path, context: DistributedContext,
                resume: bool, stop_after: int | None, progress: bool, start: dict | None = None) -> dict:  # fmt: skip
    """Distil from ``teachers`` (averaged if several) into a fresh student; returns fit's summary.

    ``start`` (TAKFL): the student's start weights, shared by the per-teacher runs. With the
    "teacher" objective a frozen copy of the start weights gives the self-regularisation's
    target; a resumed run rebuilds them as the first run did (the stem hint fit is
    deterministic) before fit restores the student's own weights."""
    first = teachers[0]
    student, config, backbone = build_student(first["model"], first["config"], first["meta"]["backbone_config"],
                                              first["meta"]["vocab_size"], base)  # fmt: skip
    objective = config.distill.objective or "full"
    config.distill.objective = objective  # recorded in the checkpoint's config
    train_set, val_set = build_datasets(config, data_root, first["tokenizer"])
    auxiliary = None
    if objective == "full":
        # Before any work: its checks (e.g. landmark supervision on data without landmarks) end the run.
        auxiliary = build_auxiliary_losses(student, config, first["tokenizer"], train_set.records)
    resuming = resume and (output / "last").exists()
    if start is not None:
        student.load_state_dict(start)
    elif needs_stem_hints(config, first["config"]) and (objective == "teacher" or not resuming):
        fit_student_stem(student, first["model"], train_set, config, context.device,
                         first["tokenizer"].pad_token_id, log=context.is_main)  # fmt: skip
    start_model = copy.deepcopy(student) if objective == "teacher" else None
    module = DistillationLoss(student, [t["model"] for t in teachers], config, start_model, auxiliary)
    extra = {"teachers": [str(Path(t["path"]).resolve()) for t in teachers], "distilled": True}
    task = TrainingTask(config=config, module=module, export_model=student, backbone_config=backbone,
                        tokenizer=first["tokenizer"], train_dataset=train_set, val_dataset=val_set,
                        eval_branches=("token",), checkpoint_extra=extra)  # fmt: skip
    return fit(task, output, context, resume=resume, stop_after=stop_after, progress=progress)


# Adam steps of TAKFL's tuned λ on the validation split (the reference code: 5 epochs of its
# validation set at batch 64, a few hundred steps on its data; λ settles well before on ours).
TUNE_STEPS = 50


def choose_lambdas(mode: str, start_state: dict, vectors: list[dict], student: torch.nn.Module, loader,
                   evaluate, config: Config) -> tuple[list[float], list[float]]:  # fmt: skip
    """TAKFL's λ on the simplex (``distill.merge_lambdas``); returns (λ, each candidate's score)."""
    if mode == "uniform":
        return uniform_lambdas(len(vectors)), []
    if mode == "candidates":
        candidates = heuristic_lambdas(len(vectors), config.distill.merge_candidates, seed=config.train.seed)
        return select_lambdas(start_state, vectors, candidates, evaluate)
    if mode == "tuned":
        loss = config.loss

        criterion = GroundingCriterion(loss)

        def task_loss(model, batch):  # the grounding loss on the validation split's boxes
            out = model(batch.images, batch.pixel_mask, batch.input_ids, batch.text_mask)
            token = out["token"]
            if batch.targets is None or token["logits"].dim() == 3:
                # Phrases with no or several targets, or every cell answering: the criterion's
                # set losses (scores included: they alone say "no object").
                parts, _ = criterion({"token": token, "grid": out["grid"]}, batch.targets if batch.targets is not None
                                     else batch.target_sets)  # fmt: skip
                return (loss.ce * parts["loss_tok_ce"] + loss.l1 * parts["loss_tok_l1"]
                        + loss.giou * parts["loss_tok_giou"] + loss.token_ref * parts.get("loss_tok_ref", 0.0))  # fmt: skip
            l1, giou = box_losses(token["boxes"], batch.targets)
            ref = reference_loss(token["ref_logits"], out["grid"], batch.targets, token.get("content_logits"))
            return loss.l1 * l1 + loss.giou * giou + loss.token_ref * ref

        student.eval()
        return tune_lambdas(student, start_state, vectors, task_loss, loader, steps=TUNE_STEPS).tolist(), []
    raise ValueError(f"unknown distill.merge_lambdas '{mode}'; choose uniform, candidates or tuned")


def distill_takfl(teachers: list[dict], base: Config, data_root: str, output: Path, context: DistributedContext,
                  resume: bool, stop_after: int | None, progress: bool) -> dict:  # fmt: skip
    """TAKFL: a student per teacher from the same start, each distilled from that teacher alone
    with the "teacher" objective (no ground truth), then θ = θ₀ + Σ λ_j (θ_j − θ₀) with λ on the
    simplex chosen on the validation split; the merged student is saved as OUTPUT/last and best."""
    if (base.distill.objective or "teacher") != "teacher":
        raise ValueError("TAKFL distils each teacher alone without ground truth (distill.objective=teacher); "
                         "distill.merge=average runs the full objective with the teachers averaged")  # fmt: skip
    base = copy.deepcopy(base)
    base.distill.objective = "teacher"
    first = teachers[0]
    student, config, backbone = build_student(first["model"], first["config"], first["meta"]["backbone_config"],
                                              first["meta"]["vocab_size"], base)  # fmt: skip
    train_set, _ = build_datasets(config, data_root, first["tokenizer"])
    for j, teacher in enumerate(teachers):
        check_takfl_output(output / f"teacher{j}", teacher)
    if needs_stem_hints(config, first["config"]):  # deterministic: a resumed run rebuilds the same start
        fit_student_stem(student, first["model"], train_set, config, context.device,
                         first["tokenizer"].pad_token_id, log=context.is_main)  # fmt: skip
    start_state = {k: v.clone() for k, v in student.state_dict().items()}
    summaries = []
    for j, teacher in enumerate(teachers):
        out_j = output / f"teacher{j}"
        finished = (out_j / "last" / "trainer_state.json").is_file() and json.loads(
            (out_j / "last" / "trainer_state.json").read_text()
        )["step"] >= base.train.max_steps
        if finished:
            summaries.append({"teacher": teacher["path"], "skipped": "already distilled"})
            continue
        if context.is_main:
            print(f"TAKFL: distilling from teacher {j} ({teacher['path']})")
        summary = distill_one([teacher], base, data_root, out_j, context, resume and (out_j / "last").exists(),
                              stop_after, progress, start=start_state)  # fmt: skip
        summaries.append({"teacher": teacher["path"], **summary})
        if summary["reason"] != "finished":
            return {"stage": f"teacher{j}", **summary}
    if not context.is_main:
        return {"stage": "merged"}
    vectors = [task_vector(start_state, load_checkpoint(output / f"teacher{j}" / "last")[0].state_dict())
               for j in range(len(teachers))]  # fmt: skip
    _, val_set = build_datasets(config, data_root, first["tokenizer"], train=False)
    if val_set is None:
        raise ValueError("TAKFL chooses λ on a validation split: set data.val_split")
    loader = evaluation_loader(val_set, config.train.eval_batch_size, 0, first["tokenizer"].pad_token_id)

    # λ is chosen on the token branch's Acc@0.5, or its F1-accuracy on a generalized split.
    metric = "f1_acc" if any(len(r.boxes_xyxy) != 1 for r in val_set.records) else "acc@0.5"

    def evaluate(state: dict) -> float:
        student.load_state_dict(state)
        results = predict_split(student, loader, ("token",), context.device, nms_iou=config.model.head.answer_nms,
                                merge=config.model.head.answer_merge)
        return selection_score(summarize(results), "token")

    lambdas, scores = choose_lambdas(base.distill.merge_lambdas, start_state, vectors, student, loader, evaluate,
                                     config)  # fmt: skip
    merged = merge_task_vectors(start_state, vectors, lambdas)
    student.load_state_dict(merged)
    accuracy = evaluate(merged)
    extra = {"teachers": [str(Path(t["path"]).resolve()) for t in teachers], "distilled": True, "merge": "takfl",
             "lambdas": lambdas, "lambda_scores": scores, f"val_{metric}": accuracy}  # fmt: skip
    for name in ("last", "best"):
        save_checkpoint(output / name, student, config, backbone, first["tokenizer"], extra=extra)
    print(f"TAKFL merge: λ = {[round(v, 3) for v in lambdas]}, val token {metric} {accuracy:.2f}")
    return {"stage": "merged", "lambdas": lambdas, f"val_{metric}": accuracy, "runs": summaries}


def distill_command(config: Config, args: argparse.Namespace) -> int:
    quiet_transformers()
    if config.train.stem_pretrain_steps > 0:
        raise ValueError("train.stem_pretrain_steps is for `simvg train`; a distilled student's stem starts from the "
                         "teacher's (copied, or fitted to it: distill.stem_hint_steps); set it to 0")  # fmt: skip
    resumed = args.resume and (Path(args.output) / "config.json").is_file()  # the run's own config: the student's model
    if not resumed and to_dict(config.model) != to_dict(ModelConfig()):
        changed = _changed_keys(to_dict(config.model), to_dict(ModelConfig()))
        raise ValueError(f"simvg distill builds the student's model from the teacher's and distill.* (student_layers, "
                         f"stem_conv, ...); model.* settings are not used: remove model.{', model.'.join(changed)}")  # fmt: skip
    output = Path(args.output)
    for path in args.teacher:
        resolve_checkpoint(path)
    teachers = load_teachers(args.teacher)
    if len(teachers) > 1:
        check_teachers_agree(teachers, config.distill.merge)
    context = setup_distributed(args.device)
    try:
        kwargs = dict(context=context, resume=args.resume, stop_after=args.stop_after, progress=not args.quiet)
        if len(teachers) > 1 and config.distill.merge == "takfl":
            summary = distill_takfl(teachers, config, args.data_root, output, **kwargs)
        elif len(teachers) == 1 or config.distill.merge == "average":
            summary = distill_one(teachers, config, args.data_root, output, **kwargs)
        else:
            raise ValueError(f"unknown distill.merge '{config.distill.merge}'; choose takfl or average")
    finally:
        cleanup_distributed()
    if context.is_main:
        print(json.dumps(summary, default=float))
    torch.set_grad_enabled(True)
    return 0


def _changed_keys(values: dict, defaults: dict, prefix: str = "") -> list[str]:
    """Dotted keys where ``values`` differs from ``defaults`` (nested dicts walked)."""
    changed = []
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(defaults.get(key), dict):
            changed += _changed_keys(value, defaults[key], f"{prefix}{key}.")
        elif value != defaults.get(key):
            changed.append(f"{prefix}{key}")
    return changed
