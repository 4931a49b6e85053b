"""What the teacher recipe's choices are worth: short runs of configs/synthref_hybrid.yaml with
one choice changed, val Acc@0.5 (token / decoder) at the end of each run, and the median
training speed (a choice that learns more per step but runs slower may not pay in 20 minutes).

    python bench/teacher_recipe.py --data-root DATA --out runs/recipe [--steps 500]

Each variant is `simvg train configs/synthref_hybrid.yaml --max-steps STEPS --set ...`; a run
whose eval_log.csv already has its final step is not retrained. Writes
bench/results/teacher_recipe.md.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "synthref_hybrid.yaml"
# The earlier recipe's regularisation: augmentation and dropout 0.1.
REGULARISED = [
    "data.augment.scale=[0.75, 1.0]",
    "data.augment.flip=0.5",
    "data.augment.color=0.5",
    "model.encoder.dropout=0.1",
    "model.head.dropout=0.1",
]

VARIANTS: dict[str, tuple[str, list[str]]] = {
    "recipe": ("the recipe: sine position init, no augmentation, no dropout", []),
    "regularised": ("+ augmentation and dropout 0.1", REGULARISED),
    "regularised_noise_pos": (
        "+ augmentation and dropout 0.1, position embeddings from small noise",
        [*REGULARISED, "model.encoder.visual_pos_init=random"],
    ),
    "encoder_full_lr": ("pretrained encoder layers at the head's learning rate (mult 1.0, not 0.2)",
                        ["train.encoder_lr_mult=1.0"]),
    "lr_2x": ("learning rate 6e-4 (not 3e-4) for every group", ["train.lr=6e-4"]),
    "image_160": ("160 px input (10x10 visual tokens, not 8x8)", ["model.image_size=160"]),
}


def final_accuracy(run: Path, steps: int) -> dict[str, float] | None:
    log = run / "eval_log.csv"
    if not log.is_file():
        return None
    rows = [r for r in csv.DictReader(log.open()) if int(r["step"]) == steps]
    return {r["branch"]: float(r["acc@0.5"]) for r in rows} or None


def median_speed(run: Path) -> float:
    """Median training images/s over the run's logged steps (train_log.csv)."""
    return statistics.median(float(r["images_per_s"]) for r in csv.DictReader((run / "train_log.csv").open()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/recipe"))
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    lines = [
        f"val Acc@0.5 after {args.steps} steps (1000 val expressions, seed 0)",
        "",
        "| variant | what | train images/s | token | decoder |",
        "|---|---|---|---|---|",
    ]
    for name, (what, overrides) in VARIANTS.items():
        run = args.out.resolve() / name
        if final_accuracy(run, args.steps) is None:
            cmd = [sys.executable, "-m", "simvg", "train", str(CONFIG), "--data-root", str(args.data_root.resolve()),
                   "--output", str(run), "--max-steps", str(args.steps), "--quiet",
                   "--set", f"train.eval_every={args.steps}", "--set", f"train.save_every={args.steps}"]  # fmt: skip
            for item in overrides:
                cmd += ["--set", item]
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, cwd=ROOT)
        acc = final_accuracy(run, args.steps)
        lines.append(f"| {name} | {what} | {median_speed(run):.1f} | {acc['token']:.1f} | {acc['decoder']:.1f} |")
    table = "\n".join(lines)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "teacher_recipe.md").write_text(f"{table}\n\nCommand: `{' '.join(sys.argv)}`\n")
    print(table)


if __name__ == "__main__":
    main()
