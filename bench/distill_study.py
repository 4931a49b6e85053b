"""The distillation study: the recipe, a scratch baseline, one ablation per loss, ONE versus no
branches, and TAKFL versus the averaged-teacher baseline — trained, evaluated and timed in one run.

    python bench/distill_study.py --teacher runs/teacher/best --data-root DATA --out runs/study \
        [--teachers-ab runs/teacher_attrloc/best runs/teacher_relcmp/best] [--only full,scratch]

Every variant is `simvg distill configs/distill_synthref.yaml --set ...` with the same steps and
seed; a finished variant is not retrained (delete its folder to redo it) and a model's
evaluation is kept next to it until its weights change. Writes
bench/results/distill_study.{json,md} and bench/results/distill_pareto.png: Acc@0.5 (token
branch) on SynthRef val, parameters, and batch-1 CPU throughput measured side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from simvg.models.quantize import DESCRIPTION as QUANTIZATION

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "distill_synthref.yaml"
NO_DISTILL = ["distill.one=0", "distill.box_kd=0", "distill.attention_transfer=0", "distill.feature_mimic=0",
              "distill.stem_hint_steps=0"]  # fmt: skip

# name -> (what it is, --set overrides on the recipe)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "full": ("the recipe: all losses", []),
    "scratch": ("same student, no teacher: MiniLM init, ground truth only, one branch",
                ["distill.init_from_teacher=false", "distill.token_branches=1", *NO_DISTILL]),
    "no_one": ("without ONE (one branch, no ensemble teacher)", ["distill.one=0", "distill.token_branches=1"]),
    "no_box_kd": ("without teacher box KD", ["distill.box_kd=0"]),
    "no_dwbd": ("box KD without DWBD confidence weights", ["distill.box_kd_confidence=false"]),
    "no_at": ("without attention transfer", ["distill.attention_transfer=0"]),
    "no_mimic": ("without token feature mimicking", ["distill.feature_mimic=0"]),
    "no_hint": ("without the stem hint phase (cheap stem fitted to the teacher's first)", ["distill.stem_hint_steps=0"]),
    "teacher_stem": ("the recipe keeping the teacher's stem (plain convs, copied)", ["distill.stem_conv=Conv"]),
    "one_layer": ("teacher_stem with one encoder layer (the teacher's first)",
                  ["distill.stem_conv=Conv", "distill.student_layers=[0]"]),
}  # fmt: skip


ABLATIONS = ("no_one", "no_box_kd", "no_dwbd", "no_at", "no_mimic")
INT8 = "_int8"  # a row named NAME_int8 is model NAME quantized by simvg.models.quantize


def run(cmd: list[str], log: Path) -> None:
    print("$", " ".join(cmd), flush=True)
    with log.open("a") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)


def distill(name: str, overrides: list[str], teachers: list[str], args: argparse.Namespace,
            steps: int | None = None) -> Path:  # fmt: skip
    output = args.out / name
    if (output / "best" / "model.safetensors").is_file() and (output / "done").is_file():
        return output / "best"
    cmd = [sys.executable, "-m", "simvg", "distill", str(args.recipe), "--data-root", str(args.data_root),
           "--output", str(output), "--quiet"]  # fmt: skip
    for teacher in teachers:
        cmd += ["--teacher", teacher]
    if (output / "last").is_dir():
        cmd.append("--resume")
    steps = steps or args.steps
    sets = overrides + [f"train.max_steps={steps}"] if steps else overrides
    for item in sets:
        cmd += ["--set", item]
    output.mkdir(parents=True, exist_ok=True)
    run(cmd, args.out / f"{name}.log")
    (output / "done").touch()
    return output / "best"


def evaluate(checkpoint: Path, data_root: Path, split: str, branch: str = "token", int8: bool = False) -> dict:
    """`simvg eval` metrics (``--int8`` with ``int8``), cached next to the checkpoint
    (RUN/study_eval_SPLIT_BRANCH[_int8].json) until its weights (or what int8 quantizes)
    change, so that an interrupted or extended study evaluates each model once."""
    cache = checkpoint.parent / f"study_eval_{split}_{branch}{INT8 if int8 else ''}.json"
    quantization = QUANTIZATION if int8 else None
    weights = checkpoint / "model.safetensors"
    if cache.is_file() and cache.stat().st_mtime > weights.stat().st_mtime:
        cached = json.loads(cache.read_text())
        if cached["data_root"] == str(data_root) and cached.get("quantization") == quantization:
            return cached["metrics"]
    out = subprocess.run(
        [sys.executable, "-m", "simvg", "eval", str(checkpoint), "--data-root", str(data_root), "--dataset",
         "synthref", "--split", split, "--branch", branch, "--json"] + (["--int8"] if int8 else []),
        check=True, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    metrics = json.loads(out.stdout)["metrics"][branch]
    cache.write_text(json.dumps({"data_root": str(data_root), "quantization": quantization, "metrics": metrics}))
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


def pareto_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    # The one-loss ablations sit on top of each other: one grey cluster with one label.
    ablations = [r for r in rows if r["name"] in ABLATIONS and r.get("images_per_s") is not None]
    if ablations:
        xs, ys = [r["images_per_s"] for r in ablations], [r["val_acc@0.5"] for r in ablations]
        ax.scatter(xs, ys, marker=".", s=30, color="grey")
        ax.annotate("one-loss ablations", (min(xs), min(ys)), textcoords="offset points", xytext=(0, -12),
                    fontsize=8, color="grey")  # fmt: skip
    for row in rows:
        if row.get("images_per_s") is None or row in ablations:
            continue
        marker = {"teacher": "s", "scratch": "x"}.get(row["name"], "^" if row["name"].endswith(INT8) else "o")
        ax.scatter(row["images_per_s"], row["val_acc@0.5"], marker=marker, s=40)
        ax.annotate(row["name"], (row["images_per_s"], row["val_acc@0.5"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)  # fmt: skip
    ax.set_xlabel("CPU throughput, batch 1 (images/s, token branch)")
    ax.set_ylabel("SynthRef val Acc@0.5 (%)")
    ax.set_title("Teacher and students: accuracy vs speed")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def markdown(rows: list[dict], takfl: dict | None) -> str:
    lines = ["| model | what | params (M, deployed) | × teacher params | img/s (batch 1) | × teacher speed | val Acc@0.5 | testA | testB |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    teacher = next(r for r in rows if r["name"] == "teacher")
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['what']} | {r['parameters'] / 1e6:.2f} | {r['parameters'] / teacher['parameters']:.2f} | "
            f"{r['images_per_s']:.1f} | {r['images_per_s'] / teacher['images_per_s']:.2f} | {r['val_acc@0.5']:.2f} | "
            f"{r['testA_acc@0.5']:.2f} | {r['testB_acc@0.5']:.2f} |"
        )
    if takfl:
        lines += ["", "| several teachers | testA Acc@0.5 | testB Acc@0.5 | testA ∪ testB Acc@0.5 |", "|---|---|---|---|"]
        for name, r in takfl.items():
            lines.append(f"| {name} | {r['testA']:.2f} | {r['testB']:.2f} | {r['union']:.2f} |")
    return "\n".join(lines)


def union_accuracy(a: dict, b: dict) -> float:
    return (a["acc@0.5"] * a["count"] + b["acc@0.5"] * b["count"]) / (a["count"] + b["count"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="the default teacher checkpoint")
    parser.add_argument("--data-root", type=Path, required=True, help="SynthRef root (simvg synth)")
    parser.add_argument("--out", type=Path, default=Path("runs/study"))
    parser.add_argument("--teachers-ab", nargs="*", default=[], help="teachers for TAKFL vs averaged (≥ 2)")
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="the distillation config the variants modify")
    parser.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variants to run")
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's train.max_steps")
    parser.add_argument("--takfl-steps", type=int, default=400, help="steps of each several-teacher student")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per model per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds (median taken)")
    parser.add_argument("--int8", default="", help="comma-separated models (e.g. teacher,full) also timed and "
                        "evaluated quantized as `quantize='int8'` does (encoder in int8), as rows NAME_int8")  # fmt: skip
    parser.add_argument("--reuse-evals", type=Path, help="a previous distill_study.json: reuse its accuracies for "
                        "checkpoints whose weights are older than it (timing is always re-measured)")  # fmt: skip
    parser.add_argument("--train-only", action="store_true", help="train the variants, skip evaluation and timing")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    # The simvg commands run from the repository root: make every path absolute first.
    args.out, args.data_root, args.recipe = args.out.resolve(), args.data_root.resolve(), args.recipe.resolve()
    args.teacher = str(Path(args.teacher).resolve())
    args.teachers_ab = [str(Path(t).resolve()) for t in args.teachers_ab]
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    checkpoints = {"teacher": Path(args.teacher)}
    what = {"teacher": "teacher (synthref_hybrid.yaml), token branch"}
    for name in args.only.split(","):
        description, overrides = VARIANTS[name]
        checkpoints[name] = distill(name, overrides, [args.teacher], args)
        what[name] = description

    takfl = None
    if len(args.teachers_ab) >= 2:
        for name, merge in (("takfl", "takfl"), ("averaged", "average")):
            checkpoints[name] = distill(name, [f"distill.merge={merge}"], args.teachers_ab, args, args.takfl_steps)
            what[name] = f"{len(args.teachers_ab)} teachers, " + ("TAKFL task-vector merge" if merge == "takfl"
                                                                  else "averaged predictions")  # fmt: skip
    if args.train_only:
        return
    for name in filter(None, args.int8.split(",")):
        if name not in checkpoints:
            parser.error(f"--int8: {name!r} is not a model of this study (known: {', '.join(checkpoints)})")
        checkpoints[name + INT8] = checkpoints[name]
        what[name + INT8] = f"{name}, {QUANTIZATION}"
    previous = {}
    if args.reuse_evals and args.reuse_evals.is_file():
        written = args.reuse_evals.stat().st_mtime
        for row in json.loads(args.reuse_evals.read_text())["rows"]:
            weights = Path(row["checkpoint"]) / "model.safetensors"
            if weights.is_file() and weights.stat().st_mtime < written:
                previous[(row["checkpoint"], row["name"].endswith(INT8))] = row
    rows = []
    speed = throughput(checkpoints, args.seconds, args.rounds)
    for name, path in checkpoints.items():
        row = {"name": name, "what": what[name], "checkpoint": str(path), **speed[name]}
        for split in ("val", "testA", "testB"):
            old = previous.get((str(path), name.endswith(INT8)))
            metrics = old[f"{split}_metrics"] if old else evaluate(path, args.data_root, split, int8=name.endswith(INT8))
            row[f"{split}_acc@0.5"] = metrics["acc@0.5"]
            row[f"{split}_metrics"] = metrics
        rows.append(row)
        print(f"{name}: val {row['val_acc@0.5']:.2f}  {row['images_per_s']:.1f} img/s  {row['parameters'] / 1e6:.2f}M", flush=True)
    if len(args.teachers_ab) >= 2:
        takfl = {}
        for name in ("takfl", "averaged"):
            r = next(r for r in rows if r["name"] == name)
            takfl[name] = {"testA": r["testA_acc@0.5"], "testB": r["testB_acc@0.5"],
                           "union": union_accuracy(r["testA_metrics"], r["testB_metrics"])}  # fmt: skip
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    report = {"command": " ".join(sys.argv), "machine": f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}",
              "threads": torch.get_num_threads(), "minutes": (time.time() - started) / 60, "rows": rows, "takfl": takfl}  # fmt: skip
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "distill_study.json").write_text(json.dumps(report, indent=2))
    table = markdown(rows, takfl)
    (args.results / "distill_study.md").write_text(f"{table}\n\nMachine: {report['machine']}. Command: `{report['command']}`\n")
    pareto_plot(rows, args.results / "distill_pareto.png")
    print(table)


if __name__ == "__main__":
    main()
