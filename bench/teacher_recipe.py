"""What the teacher recipe's choices are worth: short runs of configs/synthref_hybrid.yaml with
one choice changed, val Acc@0.5 (token / decoder) at the end of each run. None of these
choices changes the speed of a training step much (bench/train_speed.py measures it).

    python bench/teacher_recipe.py --data-root DATA --out runs/recipe [--steps 500] [--only recipe,no_category]

Each variant is `simvg train configs/synthref_hybrid.yaml --max-steps STEPS --set ...`; a run
whose eval_log.csv already has its final step is not retrained. Writes
bench/results/teacher_recipe_STEPS.md, keeping the rows of variants not run this time from
that file's previous table.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "synthref_hybrid.yaml"
# Each row changes the recipe as its overrides say. Rows measured before the current recipe
# undo its newest parts (TOKEN_POINTER: the landmark pointer reads the object token and learns
# from the grounding loss alone; PREVIOUS: no landmark relation; OLD: nor scene category
# supervision or stem pretraining); rows without category supervision were measured before
# that was added, so several also set loss.category=0.
TOKEN_POINTER = ["model.head.landmark_pointer=token", "loss.landmark_ref=0"]
PREVIOUS = [*TOKEN_POINTER, "model.head.landmark_relation=false"]
OLD = [*PREVIOUS, "loss.scene_category=0", "train.stem_pretrain_steps=0"]
NO_CATEGORY = [*OLD, "loss.category=0"]

VARIANTS: dict[str, tuple[str, list[str]]] = {
    "recipe": ("the recipe: cell boxes, detail features, token_ref 5, word alignment 20, category 20, scene "
               "category 20, the stem first trained alone for 400 batches, the landmark relation with its "
               "pointer reading the phrase's words, trained on the landmark's cell (landmark_ref 5) at 10x the "
               "head's learning rate", []),
    "words_pointer_lr1": ("the words pointer at the head's learning rate (train.landmark_pointer_lr_mult 1, not 10)",
                         ["train.landmark_pointer_lr_mult=1"]),
    "words_pointer_unsupervised": ("the words pointer learning from the grounding loss alone (loss.landmark_ref 0)",
                                   ["loss.landmark_ref=0"]),
    "token_pointer": ("the previous recipe: the landmark pointer reads the object token, learns from the "
                      "grounding loss alone", TOKEN_POINTER),
    "no_landmark_relation": ("the recipe before: without the landmark relation", PREVIOUS),
    "token_pointer_ref": ("the token pointer also trained on the landmark's cell (loss.landmark_ref 5)",
                          ["model.head.landmark_pointer=token"]),
    "token_pointer_ref_05": ("the same with loss.landmark_ref 0.5",
                             ["model.head.landmark_pointer=token", "loss.landmark_ref=0.5"]),
    "no_stem_pretrain": ("the recipe before the landmark relation without the stem's pretraining phase",
                         [*PREVIOUS, "train.stem_pretrain_steps=0"]),
    "native_256": ("the recipe before the landmark relation without the stem's pretraining, 256 px input (SynthRef's own size) "
                   "through a five-stage stem to the same 8x8 grid",
                   [*PREVIOUS, "train.stem_pretrain_steps=0", "model.image_size=256",
                    "model.encoder.stem_channels=[16,32,64,128,256]", "model.encoder.stem_blocks=[0,0,1,1,1]"]),
    "position_bias": ("the recipe before the landmark relation with a 2-D relative position bias (ALiBi-initialised) in the "
                      "encoder's attention", [*PREVIOUS, "model.encoder.relative_position_bias=true"]),
    "no_scene": ("the older recipe: without scene category supervision or the stem's pretraining", OLD),
    "no_category": ("the older recipe without category supervision", NO_CATEGORY),
    "landmark_offset": ("the older recipe with landmark offsets (weight 20) for relational phrases",
                        [*OLD, "loss.landmark_offset=20"]),
    "landmark_offset_100": ("the older recipe with landmark offsets (weight 100) for relational phrases",
                            [*OLD, "loss.landmark_offset=100"]),
    "relative_position_bias": ("the older recipe with a 2-D relative position bias (ALiBi-initialised) in the "
                               "encoder's attention", [*OLD, "model.encoder.relative_position_bias=true"]),
    "word_alignment_1": ("the older recipe without category, word alignment weight 1 (not 20)",
                         [*NO_CATEGORY, "loss.word_alignment=1.0"]),
    "word_alignment_50": ("the older recipe without category, word alignment weight 50", [*NO_CATEGORY, "loss.word_alignment=50.0"]),
    "no_decoder": ("the older recipe without category, word alignment 1, no decoder branch (so no DWBD)",
                   [*NO_CATEGORY, "loss.word_alignment=1.0", "model.head.use_decoder=false"]),
}


def final_accuracy(run: Path, steps: int) -> dict[str, float] | None:
    log = run / "eval_log.csv"
    if not log.is_file():
        return None
    rows = [r for r in csv.DictReader(log.open()) if int(r["step"]) == steps]
    return {r["branch"]: float(r["acc@0.5"]) for r in rows} or None


def earlier_rows(results: Path) -> dict[str, tuple[str, str]]:
    """The (token, decoder) cells of the variants in an earlier results file's table: a run
    whose folder is gone keeps its row (variants no longer listed are dropped)."""
    if not results.is_file():
        return {}
    rows = {}
    for line in results.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] in VARIANTS:
            rows[cells[0]] = (cells[2], cells[3])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/recipe"))
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variants to run")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    results = args.results / f"teacher_recipe_{args.steps}.md"
    measured = earlier_rows(results)  # variant -> (token, decoder) cells of the file's table
    ran = args.only.split(",")
    for name in ran:
        if name not in VARIANTS:
            parser.error(f"--only: unknown variant {name!r} (known: {', '.join(VARIANTS)})")
        run = args.out.resolve() / name
        if final_accuracy(run, args.steps) is None:
            cmd = [sys.executable, "-m", "simvg", "train", str(CONFIG), "--data-root", str(args.data_root.resolve()),
                   "--output", str(run), "--max-steps", str(args.steps), "--quiet",
                   "--set", f"train.eval_every={args.steps}", "--set", f"train.save_every={args.steps}"]  # fmt: skip
            for item in VARIANTS[name][1]:
                cmd += ["--set", item]
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, cwd=ROOT)
        acc = final_accuracy(run, args.steps)
        measured[name] = (f"{acc['token']:.1f}", f"{acc['decoder']:.1f}" if "decoder" in acc else "–")
    lines = [
        f"val Acc@0.5 after {args.steps} steps (1000 val expressions, seed 0)",
        "",
        "| variant | what | token | decoder |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | {VARIANTS[name][0]} | {' | '.join(measured[name])} |" for name in VARIANTS if name in measured]
    kept = [name for name in VARIANTS if name in measured and name not in ran]
    table = "\n".join(lines)
    note = f" (rows kept from the earlier {results.name}: {', '.join(kept)})" if kept else ""
    args.results.mkdir(parents=True, exist_ok=True)
    results.write_text(f"{table}\n\nCommand: `{' '.join(sys.argv)}`{note}\n")
    print(table)


if __name__ == "__main__":
    main()
