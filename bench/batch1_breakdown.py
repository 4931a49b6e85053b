"""Where a model's batch-1 CPU time goes: the visual stem, the whole encoder, and the whole
token-branch forward (encoder + query generator + token head), for each checkpoint given.

    python bench/batch1_breakdown.py runs/teacher/best runs/study/full/best [--seconds 2]

A ONE student with a deploy branch is timed as deployed (its other branches dropped).
Writes bench/results/batch1_breakdown.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from simvg.benchmark import save_table, synthetic_inputs, time_call
from simvg.inference import Grounder
from simvg.models.encoders.base import normalize_images


def breakdown(checkpoint: str, seconds: float) -> dict[str, float]:
    grounder = Grounder.from_pretrained(checkpoint, device="cpu")
    model = grounder.model.eval()
    model.keep_deployed_branch()
    inputs = synthetic_inputs(grounder.config, 1)
    images = inputs[0]
    with torch.inference_mode():
        stem = time_call(lambda: model.encoder.stem(normalize_images(images)), seconds)
        encoder = time_call(lambda: model.encoder(*inputs), seconds)
        total = time_call(lambda: model(*inputs, use_decoder=False), seconds)
    return {"stem": 1000 * stem, "layers_and_rest": 1000 * (encoder - stem), "encoder": 1000 * encoder,
            "head": 1000 * (total - encoder), "total": 1000 * total}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "batch1_breakdown.md")
    args = parser.parse_args()
    lines = [
        f"threads: {torch.get_num_threads()}, batch 1, fp32, token branch; ms per image",
        "",
        "| checkpoint | stem | encoder without stem | encoder | query generator + token head | total |",
        "|---|---|---|---|---|---|",
    ]
    for checkpoint in args.checkpoints:
        r = breakdown(checkpoint, args.seconds)
        lines.append(f"| {checkpoint} | {r['stem']:.2f} | {r['layers_and_rest']:.2f} | {r['encoder']:.2f} | "
                     f"{r['head']:.2f} | {r['total']:.2f} |")  # fmt: skip
    save_table("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
