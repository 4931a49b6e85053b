"""The distillation study, every row from one command: the shipped student recipe, each of its
losses removed in turn, ONE against no branches, KD on the teacher's cells against box KD alone,
student sizes, int8, TAKFL against averaged teachers, and a blind check on a fresh split.

    python bench/distill_study.py --teacher runs/teacher/best --data-root data --out runs/study \\
        --seeds 0,1,2

Every row is `simvg distill` of the recipe (configs/distill_synthref.yaml) with `--set`
overrides (ROWS), the same steps, one run folder per seed: OUT/ROW/seedS. Each row first runs
at the first seed; a row whose val Acc@0.5 lies within --close points of the row it is
compared with (ROWS' `base`) then runs at every seed, and so does its base; TAKFL and averaged
teachers, compared on testA ∪ testB, always run at every seed (--all-seeds: every row at every
seed).

TAKFL's two teachers are trained by the study (the teacher recipe on attribute + location
phrases and on relation + comparison phrases, OUT/teachers/) unless --teachers-ab names them.
The blind check is a SynthRef val split that no choice has seen, drawn with
bench/fresh_split.py's seed into OUT/fresh_split.

Resumable: a run folder that holds a finished run is not trained again, an interrupted one is
resumed, and each model's evaluations are cached next to it until its weights change; run
the same command again after an interruption or with more seeds or rows.

Writes RESULTS/distill_study.{json,md} and RESULTS/distill_pareto.png (RESULTS:
bench/results, or OUT/results with --quick): Acc@0.5 of the token branch (mean over seeds,
with the spread) on val, testA, testB and the fresh split, deployed parameters, and batch-1
CPU throughput of every row's first seed measured side by side.

--quick proves the command end to end in about a minute: the tiny recipes, a few steps, tiny
data and a tiny teacher (made under OUT unless --data-root / --teacher are given).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# This checkout's simvg (not another installed copy) and bench/'s fresh_split.
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from fresh_split import SEED as FRESH_SEED  # noqa: E402
from fresh_split import generate_fresh_split  # noqa: E402

from simvg.cli import main as simvg  # noqa: E402
from simvg.config import load_config  # noqa: E402
from simvg.models.quantize import DESCRIPTION as QUANTIZATION  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
RECIPE, QUICK_RECIPE = CONFIGS / "distill_synthref.yaml", CONFIGS / "distill_synthref_tiny.yaml"
TEACHER_RECIPE, QUICK_TEACHER_RECIPE = CONFIGS / "synthref_hybrid.yaml", CONFIGS / "synthref_tiny.yaml"
# The shipped student: the recipe keeping the teacher's stem (the Makefile's default-model).
SHIPPED = ("distill.stem_conv=Conv",)
# TAKFL's teachers: the teacher recipe on two halves of the expression types (no phrase of the
# first names a landmark, so it has no landmark supervision).
AB_TEACHERS = {
    "attrloc": ("data.train_expression_types=[attribute, location]", "loss.landmark_ref=0"),
    "relcmp": ("data.train_expression_types=[relation, comparison]",),
}
INT8 = "_int8"  # a row named NAME_int8 is model NAME quantized as `simvg eval --int8` does
SPLITS = ("val", "testA", "testB", "fresh")  # fresh: the fresh split's val


@dataclass(frozen=True)
class Row:
    """A study row: ``sets`` are the `simvg distill --set` overrides of the recipe; ``base`` the
    row it is compared with; ``teachers`` "main" (the teacher) or "ab" (TAKFL's two)."""

    name: str
    what: str
    sets: tuple[str, ...]
    base: str | None = None
    teachers: str = "main"


def _row(name: str, what: str, *sets: str, base: str | None = "shipped", shipped: bool = True) -> Row:
    return Row(name, what, (*SHIPPED, *sets) if shipped else sets, base)


NO_TEACHER = ("distill.init_from_teacher=false", "distill.token_branches=1", "distill.one=0", "distill.one_box=0",
              "distill.cell_kd=0", "distill.box_kd=0", "distill.attention_transfer=0", "distill.feature_mimic=0",
              "distill.stem_hint_steps=0")  # fmt: skip
ONE_STUDENT = ("distill.token_branches=1",)  # TAKFL's students: the objective has no ONE term
ROWS: list[Row] = [
    _row("shipped", "the shipped recipe: every loss, the teacher's stem kept", base=None),
    _row("no_gt", "without the ground-truth box and reference-cell losses", "distill.gt=0"),
    _row("no_aux", "without the auxiliary supervision (word alignment, category, landmark cell)",
         "loss.word_alignment=0", "loss.category=0", "loss.landmark_ref=0"),
    _row("no_one_cells", "without ONE's KL on cells (branches and box pull kept)", "distill.one=0"),
    _row("no_one_box", "without ONE's box pull (branches and KL on cells kept)", "distill.one_box=0"),
    _row("no_one", "without ONE: one branch, no ensemble", "distill.one=0", "distill.one_box=0",
         "distill.token_branches=1"),
    _row("box_only", "KD on boxes only: without KD on the teacher's cells", "distill.cell_kd=0"),
    _row("no_box_kd", "without box KD", "distill.box_kd=0"),
    _row("no_dwbd", "box KD without DWBD confidence weights", "distill.box_kd_confidence=false"),
    _row("no_at", "without attention transfer", "distill.attention_transfer=0"),
    _row("no_mimic", "without object-token feature mimicking", "distill.feature_mimic=0"),
    _row("scratch", "the same student without a teacher: pretrained init, ground truth only, one branch",
         *NO_TEACHER),
    _row("one_layer", "one encoder layer (the teacher's first)", "distill.student_layers=[0]"),
    _row("dconv_stem", "a cheaper stem: DConv convolutions fitted to the teacher's stem first (hints)", base=None,
         shipped=False),
    _row("no_hint", "dconv_stem without the hint phase", "distill.stem_hint_steps=0", base="dconv_stem", shipped=False),
    Row("takfl", "TAKFL's two teachers, as published: per-teacher KD without ground truth, task vectors merged",
        (*SHIPPED, *ONE_STUDENT, "distill.merge=takfl"), teachers="ab"),
    Row("averaged", "the same two teachers averaged, same objective (no ground truth)",
        (*SHIPPED, *ONE_STUDENT, "distill.merge=average", "distill.objective=teacher"), base="takfl", teachers="ab"),
]  # fmt: skip
ROW_NAMES = [r.name for r in ROWS]


def call(argv: list[str], log: Path | None = None) -> str:
    """Run a `simvg` command in this process (no interpreter start per run) and return its
    standard output; with ``log``, everything it prints is appended there instead."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        if log is not None:
            out = err = stack.enter_context(log.open("a"))
            print("$ simvg", " ".join(argv), file=out, flush=True)
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        code = simvg(argv)
    if code != 0:
        where = f"see {log}" if log is not None else err.getvalue().strip()[-2000:]
        raise RuntimeError(f"simvg {argv[0]} failed with exit code {code}: {where}")
    return "" if log is not None else out.getvalue()


def _state_step(run: Path) -> int:
    state = run / "last" / "trainer_state.json"
    return json.loads(state.read_text())["step"] if state.is_file() else -1


def finished(run: Path, row: Row | None, steps: int) -> bool:
    """Whether ``run`` holds a complete run: its last step reached (TAKFL: the merge written)."""
    if row is not None and "distill.merge=takfl" in row.sets:
        config = run / "last" / "config.json"
        return config.is_file() and "lambdas" in json.loads(config.read_text())
    return _state_step(run) >= steps and (run / "best" / "model.safetensors").is_file()


def train_run(argv: list[str], run: Path, row: Row | None, steps: int, log: Path) -> Path:
    """`simvg ARGV --output RUN` unless RUN is finished (resumed where it holds a part); returns RUN/best."""
    if finished(run, row, steps):
        return run / "best"
    resume = (run / "last").is_dir() or (run / "last.old").is_dir() or any(run.glob("teacher*/last"))
    run.parent.mkdir(parents=True, exist_ok=True)
    print(f"training {run} ({'resumed' if resume else 'new'})", flush=True)
    call([*argv, "--output", str(run), "--quiet", *(["--resume"] if resume else [])], log)
    if not finished(run, row, steps):  # a signal stops the run cleanly: the study stops too
        raise SystemExit(f"{run} did not finish (interrupted?); run the same command again to resume it")
    return run / "best"


@dataclass
class Study:
    args: argparse.Namespace
    recipe: Path
    teacher_recipe: Path

    def distill(self, row: Row, seed: int, teachers: list[str]) -> Path:
        steps = self.args.takfl_steps if row.teachers == "ab" else self.args.steps
        argv = ["distill", str(self.recipe), "--data-root", str(self.args.data_root)]
        for teacher in teachers:
            argv += ["--teacher", teacher]
        once = (f"train.eval_every={steps}", f"train.save_every={steps}") if self.args.quick else ()
        for item in (*row.sets, f"train.max_steps={steps}", f"train.seed={seed}", *once, *self.args.set):
            argv += ["--set", item]
        run = self.args.out / row.name / f"seed{seed}"
        return train_run(argv, run, row, steps, self.args.out / row.name / f"seed{seed}.log")

    def train_teacher(self, name: str, sets: tuple[str, ...], steps: int) -> str:
        run = self.args.out / "teachers" / name
        argv = ["train", str(self.teacher_recipe), "--data-root", str(self.args.data_root)]
        for item in (*sets, f"train.max_steps={steps}"):
            argv += ["--set", item]
        return str(train_run(argv, run, None, steps, self.args.out / "teachers" / f"{name}.log"))


def evaluate(checkpoint: Path, splits: dict[str, tuple[Path, str]], int8: bool = False) -> dict[str, dict]:
    """Token-branch metrics of ``checkpoint`` on each of ``splits`` (name -> (data root, split)),
    as `simvg eval --branch token [--int8]` computes them; each cached next to the checkpoint
    (RUN/study_eval_NAME[_int8].json) until its weights change, the model loaded once for the rest."""
    from simvg.data.dataset import GroundingDataset
    from simvg.data.readers import load_records
    from simvg.engine.evaluate import evaluation_loader, predict_split, summarize
    from simvg.inference import Grounder

    quantization = QUANTIZATION if int8 else None
    written = (checkpoint / "model.safetensors").stat().st_mtime
    metrics, grounder = {}, None
    for name, (root, split) in splits.items():
        cache = checkpoint.parent / f"study_eval_{name}{INT8 if int8 else ''}.json"
        if cache.is_file() and cache.stat().st_mtime > written:
            cached = json.loads(cache.read_text())
            if cached["data_root"] == str(root) and cached.get("quantization") == quantization:
                metrics[name] = cached["metrics"]
                continue
        if grounder is None:
            grounder = Grounder.from_pretrained(checkpoint, device="cpu", quantize="int8" if int8 else None)
        records = load_records(root, "synthref", split)
        dataset = GroundingDataset(records, grounder.preprocessor, train=False)
        loader = evaluation_loader(dataset, 64, 0, grounder.tokenizer.pad_token_id)
        metrics[name] = summarize(predict_split(grounder.model, loader, ["token"], grounder.device))["token"]
        cache.write_text(json.dumps({"data_root": str(root), "quantization": quantization, "metrics": metrics[name]}))
    return metrics


def throughput(checkpoints: dict[str, Path], seconds: float, rounds: int) -> dict[str, dict]:
    """Batch-1 token-branch images/s and parameter counts of the deployed models (a ONE
    student with a deploy branch keeps only that branch; an ``_int8`` row counts the float
    model's parameters), models timed alternately."""
    from simvg.benchmark import synthetic_inputs, time_call
    from simvg.inference import Grounder
    from simvg.models.quantize import quantize_for_cpu

    models, parameters = {}, {}
    for name, path in checkpoints.items():
        grounder = Grounder.from_pretrained(path, device="cpu")
        grounder.model.keep_deployed_branch()  # count and time what is deployed: `simvg export --keep-branch`
        parameters[name] = sum(p.numel() for p in grounder.model.parameters())
        if name.endswith(INT8):
            quantize_for_cpu(grounder.model, "int8")
        models[name] = grounder
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(rounds):  # interleave rounds so that drifting machine load hits every model alike
            for name, grounder in models.items():
                inputs = synthetic_inputs(grounder.config, 1)
                grounder.model.eval()
                times[name].append(time_call(lambda g=grounder, x=inputs: g.model(*x, use_decoder=False), seconds))
    return {
        name: {"images_per_s": 1.0 / sorted(t)[len(t) // 2], "ms_per_image": 1000 * sorted(t)[len(t) // 2],
               "parameters": parameters[name]}
        for name, t in times.items()
    }  # fmt: skip


def union_accuracy(a: dict, b: dict) -> float:
    return (a["acc@0.5"] * a["count"] + b["acc@0.5"] * b["count"]) / (a["count"] + b["count"])


def score(row: dict, seed: int) -> float:
    """What decides more seeds: testA ∪ testB for TAKFL's rows (as the issue asks), else val."""
    metrics = row["seeds"][seed]
    if row["teachers"] == "ab":
        return union_accuracy(metrics["testA"], metrics["testB"])
    return metrics["val"]["acc@0.5"]


def spread(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def cell(values: list[float]) -> str:
    mean, sd = spread(values)
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ± {sd:.2f}"


def pareto_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    # The one-loss ablations sit on top of each other: one grey cluster with one label.
    ablations = [r for r in rows if r.get("base") == "shipped" and r["name"] not in ("scratch", "one_layer")]
    if ablations:
        xs, ys = [r["images_per_s"] for r in ablations], [r["mean"]["val"] for r in ablations]
        ax.scatter(xs, ys, marker=".", s=30, color="grey")
        ax.annotate("one-loss ablations", (min(xs), min(ys)), textcoords="offset points", xytext=(0, -12),
                    fontsize=8, color="grey")  # fmt: skip
    for row in rows:
        if row in ablations:
            continue
        marker = {"teacher": "s", "scratch": "x"}.get(row["name"], "^" if row["name"].endswith(INT8) else "o")
        ax.scatter(row["images_per_s"], row["mean"]["val"], marker=marker, s=40)
        ax.annotate(row["name"], (row["images_per_s"], row["mean"]["val"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)  # fmt: skip
    ax.set_xlabel("CPU throughput, batch 1 (images/s, token branch)")
    ax.set_ylabel("SynthRef val Acc@0.5 (%, mean over seeds)")
    ax.set_title("Teacher and students: accuracy vs speed")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def markdown(rows: list[dict], comparisons: list[dict], takfl: list[dict], report: dict) -> str:
    teacher = next(r for r in rows if r["name"] == "teacher")
    lines = ["| model | what | params (M, deployed) | × teacher params | img/s (batch 1) | × teacher speed | seeds | "
             "val Acc@0.5 | testA | testB | fresh split (blind) |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        values = [cell([r["seeds"][s][split]["acc@0.5"] for s in r["seeds"]]) for split in SPLITS]
        lines.append(f"| {r['name']} | {r['what']} | {r['parameters'] / 1e6:.2f} | "
                     f"{r['parameters'] / teacher['parameters']:.2f} | {r['images_per_s']:.1f} | "
                     f"{r['images_per_s'] / teacher['images_per_s']:.2f} | {','.join(map(str, r['seeds']))} | "
                     f"{' | '.join(values)} |")  # fmt: skip
    lines += ["", "Each row against the row it changes (Δ = row − base, points; val, or testA ∪ testB for TAKFL; "
              "seeds both rows ran):", "",
              "| row | base | metric | seeds | Δ per seed | mean Δ | Δ fresh split (mean) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in comparisons:
        per_seed = ", ".join(f"{d:+.2f}" for d in c["deltas"])
        lines.append(f"| {c['row']} | {c['base']} | {c['metric']} | {','.join(map(str, c['seeds']))} | {per_seed} | "
                     f"{statistics.fmean(c['deltas']):+.2f} | {c['fresh_delta']:+.2f} |")  # fmt: skip
    if takfl:
        lines += ["", "| several teachers | seed | λ | testA Acc@0.5 | testB Acc@0.5 | testA ∪ testB |", "|---|---|---|---|---|---|"]
        for t in takfl:
            lams = ", ".join(f"{v:.3f}" for v in t["lambdas"]) if t["lambdas"] else "—"
            lines.append(f"| {t['name']} | {t['seed']} | {lams} | {t['testA']:.2f} | {t['testB']:.2f} | {t['union']:.2f} |")
    lines += ["", f"Machine: {report['machine']}; {report['minutes']:.0f} min. Command: `{report['command']}`"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", help="the default teacher checkpoint (--quick: trained under OUT if not given)")
    parser.add_argument("--data-root", type=Path, help="SynthRef root (--quick: tiny data made under OUT if not given)")
    parser.add_argument("--out", type=Path, default=Path("runs/study"), help="run folders (default runs/study)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; the first is every row's")
    parser.add_argument("--close", type=float, default=1.0, help="rows within this many points of their base run "
                        "at every seed (default 1.0)")  # fmt: skip
    parser.add_argument("--all-seeds", action="store_true", help="every row at every seed")
    parser.add_argument("--only", default=",".join(ROW_NAMES), help="comma-separated rows (default: all)")
    parser.add_argument("--teachers-ab", nargs=2, help="TAKFL's two teachers (default: trained under OUT/teachers)")
    parser.add_argument("--steps", type=int, help="steps of each student (default: the recipe's)")
    parser.add_argument("--takfl-steps", type=int, default=250, help="steps of each several-teacher student")
    parser.add_argument("--teacher-ab-steps", type=int, default=500, help="steps of each of TAKFL's teachers")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every row")
    parser.add_argument("--int8", default="teacher,shipped,dconv_stem", help="rows also evaluated and timed "
                        "quantized (`simvg eval --int8`), as rows NAME_int8")  # fmt: skip
    parser.add_argument("--fresh-images", type=int, default=1000, help="images of the fresh split")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per model per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds (median taken)")
    parser.add_argument("--train-only", action="store_true", help="train (and evaluate) every run, no timing or "
                        "results")  # fmt: skip
    parser.add_argument("--results", type=Path, help="where the table and plot go (default bench/results; "
                        "--quick: OUT/results)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="the whole command in about a minute: tiny recipes, "
                        "data and teacher, a few steps")  # fmt: skip
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.only = [n for n in args.only.split(",") if n]
    unknown = [n for n in args.only if n not in ROW_NAMES]
    if unknown:
        parser.error(f"--only: unknown rows {', '.join(unknown)} (known: {', '.join(ROW_NAMES)})")
    if not args.quick and (args.teacher is None or args.data_root is None):
        parser.error("--teacher and --data-root are required (except with --quick)")
    args.out = args.out.resolve()
    if args.quick:
        args.steps = args.steps or 4
        args.takfl_steps, args.teacher_ab_steps, args.fresh_images = 2, 4, 4
        args.seconds, args.rounds = 0.0, 1
        torch.set_num_threads(1)  # tiny models: on a busy machine a second thread only waits
        args.results = args.results or args.out / "results"
    args.results = (args.results or ROOT / "bench" / "results").resolve()
    return args


def prepare(args: argparse.Namespace, study: Study) -> None:
    """Data, teacher, TAKFL's teachers and the fresh split, each made once."""
    args.out.mkdir(parents=True, exist_ok=True)
    if args.data_root is None:  # --quick
        args.data_root = args.out / "data"
        if not (args.data_root / "annotations" / "synthref" / "instances.json").is_file():
            call(["synth", "--out", str(args.data_root), "--train", "24", "--val", "8", "--testA", "4", "--testB", "4",
                  "--image-size", "96"])  # fmt: skip
    args.data_root = args.data_root.resolve()
    if args.teacher is None:  # --quick
        args.teacher = study.train_teacher("main", (), 4)
    args.teacher = str(Path(args.teacher).resolve())
    if args.steps is None:
        args.steps = load_config(study.recipe).train.max_steps
    if "takfl" in args.only or "averaged" in args.only:
        if args.teachers_ab:
            args.teachers_ab = [str(Path(t).resolve()) for t in args.teachers_ab]
        else:
            args.teachers_ab = [study.train_teacher(n, s, args.teacher_ab_steps) for n, s in AB_TEACHERS.items()]
    args.fresh_root = args.out / "fresh_split"
    if not (args.fresh_root / "annotations" / "synthref" / "instances.json").is_file():
        generate_fresh_split(args.fresh_root, FRESH_SEED, args.fresh_images, 96 if args.quick else 256)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.time()
    study = Study(args, QUICK_RECIPE if args.quick else RECIPE, QUICK_TEACHER_RECIPE if args.quick else TEACHER_RECIPE)
    prepare(args, study)
    rows = {r.name: r for r in ROWS if r.name in args.only}

    def runs(row: Row, seeds: list[int]) -> dict[int, Path]:
        teachers = args.teachers_ab if row.teachers == "ab" else [args.teacher]
        return {seed: study.distill(row, seed, teachers) for seed in seeds}

    def measured(row: Row, checkpoints: dict[int, Path], int8: bool = False) -> dict:
        splits = {split: (args.data_root, split) for split in SPLITS[:-1]} | {"fresh": (args.fresh_root, "val")}
        seeds = {s: evaluate(p, splits, int8) for s, p in checkpoints.items()}
        return {"name": row.name + (INT8 if int8 else ""), "what": row.what, "base": None if int8 else row.base,
                "teachers": row.teachers, "seeds": seeds, "checkpoints": {s: str(p) for s, p in checkpoints.items()}}

    seeds = args.seeds if args.all_seeds else args.seeds[:1]
    checkpoints = {name: runs(row, seeds) for name, row in rows.items()}
    # More seeds where a row and its base lie within --close points at the first seed, and always
    # for TAKFL against averaged teachers (a claim about merging that needs seeds to stand).
    first = {name: measured(row, checkpoints[name]) for name, row in rows.items()}
    close = {n for r in rows.values() if r.base in rows
             for n in (r.name, r.base)
             if r.teachers == "ab" or abs(score(first[r.name], seeds[0]) - score(first[r.base], seeds[0])) < args.close}  # fmt: skip
    for name in (n for n in rows if n in close):
        checkpoints[name] |= runs(rows[name], args.seeds)
    if args.train_only:
        return

    teacher_row = Row("teacher", "the teacher (synthref_hybrid.yaml), token branch", ())
    measured_rows = [measured(teacher_row, {args.seeds[0]: Path(args.teacher)})]
    measured_rows += [measured(rows[name], checkpoints[name]) for name in rows]
    by_name = {r["name"]: r for r in measured_rows}
    for name in filter(None, args.int8.split(",")):
        if name in by_name:
            measured_rows.append(measured(teacher_row if name == "teacher" else rows[name],
                                          {s: Path(p) for s, p in by_name[name]["checkpoints"].items()}, int8=True))  # fmt: skip
    timed = {r["name"]: Path(next(iter(r["checkpoints"].values()))) for r in measured_rows}
    speed = throughput(timed, args.seconds, args.rounds)
    for r in measured_rows:
        r |= speed[r["name"]]
        r["mean"] = {split: spread([r["seeds"][s][split]["acc@0.5"] for s in r["seeds"]])[0] for split in SPLITS}
        print(f"{r['name']}: val {r['mean']['val']:.2f} (seeds {list(r['seeds'])})  {r['images_per_s']:.1f} img/s  "
              f"{r['parameters'] / 1e6:.2f}M", flush=True)  # fmt: skip

    comparisons = []
    for r in measured_rows:
        base = by_name.get(r["base"]) if r["base"] else None
        if base is None:
            continue
        both = [s for s in r["seeds"] if s in base["seeds"]]
        fresh = [r["seeds"][s]["fresh"]["acc@0.5"] - base["seeds"][s]["fresh"]["acc@0.5"] for s in both]
        comparisons.append({"row": r["name"], "base": base["name"], "seeds": both,
                            "metric": "testA ∪ testB" if r["teachers"] == "ab" else "val",
                            "deltas": [score(r, s) - score(base, s) for s in both],
                            "fresh_delta": statistics.fmean(fresh)})  # fmt: skip
    takfl = []
    for r in measured_rows:
        if r["teachers"] != "ab":
            continue
        for s, metrics in r["seeds"].items():
            config = json.loads((Path(r["checkpoints"][s]).parent / "last" / "config.json").read_text())
            takfl.append({"name": r["name"], "seed": s, "lambdas": config.get("lambdas"), "testA": metrics["testA"]["acc@0.5"],
                          "testB": metrics["testB"]["acc@0.5"], "union": union_accuracy(metrics["testA"], metrics["testB"])})  # fmt: skip

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    command = "python bench/distill_study.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {"command": command, "machine": f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}",
              "threads": torch.get_num_threads(), "minutes": (time.time() - started) / 60, "fresh_split_seed": FRESH_SEED,
              "rows": measured_rows, "comparisons": comparisons, "takfl": takfl}  # fmt: skip
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "distill_study.json").write_text(json.dumps(report, indent=2, default=str))
    table = markdown(measured_rows, comparisons, takfl, report)
    (args.results / "distill_study.md").write_text(table + "\n")
    pareto_plot(measured_rows, args.results / "distill_pareto.png")
    print(table)


if __name__ == "__main__":
    main()
