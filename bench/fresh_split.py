"""Accuracy on a SynthRef split that no decision has seen: generates a fresh val split (its
own seed), then evaluates each checkpoint's token branch there with `simvg eval` (``NAME:int8``
evaluates NAME with ``--int8``). A blind check of figures that were measured on the val split
that the recipes and choices were made on.

    python bench/fresh_split.py runs/teacher/best runs/study/full/best runs/study/full/best:int8 [--seed 20261129]

``--data-root DIR`` evaluates on DIR's own val split instead (no split generated), for
comparisons on the usual val split made the same way.

Writes bench/results/fresh_split.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from simvg.benchmark import save_table

ROOT = Path(__file__).resolve().parents[1]
SEED = 20261129  # no recipe, choice or test has drawn a split with this seed


def generate_fresh_split(root: Path | str, seed: int = SEED, images: int = 1000, image_size: int = 256) -> Path:
    """Write a SynthRef val split of ``images`` images drawn with ``seed`` under the data root
    ``root`` (dataset "synthref", as `simvg synth --train 0 --val IMAGES --testA 0 --testB 0`
    writes it); returns its instances.json."""
    from simvg.data.synthref import generate_synthref

    counts = {"train": 0, "val": images, "testA": 0, "testB": 0}
    return generate_synthref(root, "synthref", counts, seed=seed, image_size=image_size)


def simvg(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "simvg", *args], check=True, capture_output=True, text=True,
                          cwd=ROOT).stdout  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="checkpoint directories; NAME:int8 evaluates with --int8")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--data-root", type=Path, help="evaluate on this data root's val split instead of a fresh one")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fresh_split.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as fresh:
        if args.data_root is not None:
            root, what = str(args.data_root), f"SynthRef val split of {args.data_root}"
        else:
            root, what = fresh, f"SynthRef val split generated with seed {args.seed} ({args.images} images)"
            generate_fresh_split(root, args.seed, args.images)
        lines = [f"{what}; token branch", "", "| checkpoint | expressions | Acc@0.5 |", "|---|---|---|"]
        for entry in args.checkpoints:
            checkpoint, _, mode = entry.partition(":")
            extra = ["--int8"] if mode == "int8" else []
            out = simvg("eval", checkpoint, "--data-root", root, "--dataset", "synthref", "--split", "val", "--branch",
                        "token", "--json", *extra)  # fmt: skip
            metrics = json.loads(out)["metrics"]["token"]
            lines.append(f"| {entry} | {metrics['count']} | {metrics['acc@0.5']:.2f} |")
            print(lines[-1], flush=True)
    save_table("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
