"""The visual stem at inference: as trained (BatchNorm separate, NCHW) against the kept fused
copy inference runs (BatchNorm folded into the convolutions, channels-last), batch 1, the
two taking turns call by call, for each checkpoint given.

    python bench/stem_speed.py runs/teacher/best runs/study/full/best [--seconds 30]

Writes bench/results/stem_speed.md.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from simvg.benchmark import save_table, synthetic_inputs, take_turns
from simvg.inference import Grounder
from simvg.models.conv_stem import run_stages
from simvg.models.encoders.base import normalize_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "stem_speed.md")
    args = parser.parse_args()
    calls = {}
    for checkpoint in args.checkpoints:
        grounder = Grounder.from_pretrained(checkpoint, device="cpu")
        stem = grounder.model.eval().encoder.stem
        images = normalize_images(synthetic_inputs(grounder.config, 1)[0])
        calls[(checkpoint, "as trained")] = lambda stem=stem, x=images: run_stages(stem.stages, x)
        calls[(checkpoint, "fused")] = lambda stem=stem, x=images: stem(x)
    with torch.inference_mode():
        times = take_turns(calls, args.seconds)
    lines = [f"threads: {torch.get_num_threads()}, batch 1, fp32; median ms, {len(times[next(iter(times))])} calls each",
             "", "| checkpoint | as trained | fused, channels-last | ratio |", "|---|---|---|---|"]  # fmt: skip
    for checkpoint in args.checkpoints:
        plain, fused = (1000 * statistics.median(times[(checkpoint, n)]) for n in ("as trained", "fused"))
        lines.append(f"| {checkpoint} | {plain:.2f} | {fused:.2f} | {plain / fused:.2f}x |")
    save_table("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
