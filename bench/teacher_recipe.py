"""What the teacher recipe's choices are worth: short runs of configs/synthref_hybrid.yaml with
one choice changed, val Acc@0.5 (token / decoder) at the end of each run.

    python bench/teacher_recipe.py --data-root DATA --out runs/recipe [--steps 500]

Each variant is `simvg train configs/synthref_hybrid.yaml --max-steps STEPS --set ...`; a run
whose eval_log.csv already has its final step is not retrained. Writes
bench/results/teacher_recipe.md.
"""

from __future__ import annotations

import argparse
import csv
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
}


def final_accuracy(run: Path, steps: int) -> dict[str, float] | None:
    log = run / "eval_log.csv"
    if not log.is_file():
        return None
    rows = [r for r in csv.DictReader(log.open()) if int(r["step"]) == steps]
    return {r["branch"]: float(r["acc@0.5"]) for r in rows} or None


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
        "| variant | what | token | decoder |",
        "|---|---|---|---|",
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
        lines.append(f"| {name} | {what} | {acc['token']:.1f} | {acc['decoder']:.1f} |")
    table = "\n".join(lines)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "teacher_recipe.md").write_text(f"{table}\n\nCommand: `{' '.join(sys.argv)}`\n")
    print(table)


if __name__ == "__main__":
    main()
