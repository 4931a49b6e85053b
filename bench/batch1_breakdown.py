"""Where a model's batch-1 CPU time goes: the visual stem, the whole encoder, and the whole
token-branch forward (encoder + query generator + token head), for each checkpoint given.

    python bench/batch1_breakdown.py runs/teacher/best runs/study/full/best [--seconds 30]

A ONE student with a deploy branch is timed as deployed (its other branches dropped). All
calls of all checkpoints take turns, one call each, for ``--seconds``; medians.
Writes bench/results/batch1_breakdown.md.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from simvg.benchmark import save_table, synthetic_inputs, take_turns
from simvg.inference import Grounder
from simvg.models.encoders.base import normalize_images


def parts(checkpoint: str) -> dict:
    """The calls timed for ``checkpoint``: its stem, its encoder and its token-branch forward."""
    grounder = Grounder.from_pretrained(checkpoint, device="cpu")
    model = grounder.model.eval()
    model.keep_deployed_branch()
    inputs = synthetic_inputs(grounder.config, 1)
    images = inputs[0]
    return {
        "stem": lambda: model.encoder.stem(normalize_images(images)),
        "encoder": lambda: model.encoder(*inputs),
        "total": lambda: model(*inputs, use_decoder=False),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "batch1_breakdown.md")
    args = parser.parse_args()
    calls = {(checkpoint, name): call for checkpoint in args.checkpoints for name, call in parts(checkpoint).items()}
    with torch.inference_mode():
        times = take_turns(calls, args.seconds)
    lines = [
        f"threads: {torch.get_num_threads()}, batch 1, fp32, token branch; median ms per image, "
        f"{len(times[next(iter(times))])} calls each, taking turns",
        "",
        "| checkpoint | stem | encoder without stem | encoder | query generator + token head | total |",
        "|---|---|---|---|---|---|",
    ]
    for checkpoint in args.checkpoints:
        stem, encoder, total = (1000 * statistics.median(times[(checkpoint, n)]) for n in ("stem", "encoder", "total"))
        lines.append(f"| {checkpoint} | {stem:.2f} | {encoder - stem:.2f} | {encoder:.2f} | {total - encoder:.2f} | "
                     f"{total:.2f} |")  # fmt: skip
    save_table("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
