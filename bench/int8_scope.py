"""What int8 quantization should cover at batch 1: each checkpoint in float, with its
encoder's linear layers in int8 (heads float, run folded: what ``quantize="int8"`` does),
and with every linear layer in int8 (heads too, which then cannot be folded); the models
take turns call by call, token branch.

    python bench/int8_scope.py runs/teacher/best runs/study/full/best [--seconds 60]

Writes bench/results/int8_scope.md.
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from pathlib import Path

import torch
from torch import nn

from simvg.benchmark import save_table, synthetic_inputs, take_turns
from simvg.inference import Grounder
from simvg.models.quantize import quantize_for_cpu


def load(checkpoint: str, scope: str) -> tuple[Grounder, nn.Module]:
    grounder = Grounder.from_pretrained(checkpoint, device="cpu")
    model = grounder.model.eval()
    model.keep_deployed_branch()
    if scope == "encoder int8":
        quantize_for_cpu(model, "int8")
    elif scope == "every linear int8":
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, inplace=True)
    return grounder, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "int8_scope.md")
    args = parser.parse_args()
    scopes = ("float", "encoder int8", "every linear int8")
    models = {(c, s): load(c, s) for c in args.checkpoints for s in scopes}
    inputs = {key: synthetic_inputs(grounder.config, 1) for key, (grounder, _) in models.items()}
    calls = {key: (lambda m=model, x=inputs[key]: m(*x, use_decoder=False)) for key, (_, model) in models.items()}
    with torch.inference_mode():
        times = take_turns(calls, args.seconds)
    lines = [f"threads: {torch.get_num_threads()}, batch 1, token branch, {len(times[next(iter(times))])} calls each; "
             "median ms per image", "", "| checkpoint | " + " | ".join(scopes) + " |",
             "|---|" + "---|" * len(scopes)]  # fmt: skip
    for checkpoint in args.checkpoints:
        cells = [f"{1000 * statistics.median(times[(checkpoint, s)]):.2f}" for s in scopes]
        lines.append(f"| {checkpoint} | " + " | ".join(cells) + " |")
    save_table("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
