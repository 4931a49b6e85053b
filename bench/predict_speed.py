"""Batch-1 ``Grounder.predict`` time of several checkpoints, side by side: what a user waits for
one image and one phrase (a 640 x 480 PIL image in memory), pre- and post-processing included.

    python bench/predict_speed.py simvg/weights/synthref-student runs/student/one_answer [--seconds 30]

The checkpoints take turns call by call (``simvg.benchmark.take_turns``); medians and fastest
calls. Writes bench/results/predict_speed.md.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from PIL import Image

from simvg import Grounder
from simvg.benchmark import cpu_name, save_table, take_turns

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "examples" / "synthref_0000003.png"
PHRASE = "the blue triangle"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "predict_speed.md")
    args = parser.parse_args()
    image = Image.open(IMAGE).convert("RGB").resize((640, 480))
    grounders = {path: Grounder.from_pretrained(path, device="cpu") for path in args.checkpoints}
    calls = {path: (lambda g=g: g.predict(image, PHRASE)) for path, g in grounders.items()}
    times = take_turns(calls, args.seconds)
    lines = [
        f"`Grounder.predict(PIL image 640 x 480, \"{PHRASE}\")` at batch 1, token branch, {torch.get_num_threads()} "
        f"threads, {cpu_name()}; {len(next(iter(times.values())))} calls each, taking turns.",
        "",
        "| checkpoint | answers per phrase | params (M) | median ms | fastest ms |",
        "|---|---|---|---|---|",
    ]
    for path, g in grounders.items():
        answers = "several" if g.config.model.head.num_queries > 1 else "one"
        params = sum(p.numel() for p in g.model.parameters()) / 1e6
        ms = [1000 * t for t in times[path]]
        lines.append(f"| {path} | {answers} | {params:.2f} | {statistics.median(ms):.1f} | {min(ms):.1f} |")
    save_table("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
