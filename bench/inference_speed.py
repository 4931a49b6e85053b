"""Inference cost of the heads: encoder alone vs encoder + token branch vs encoder + decoder
branch, at batch 1 and 32, on this machine's CPU.

    python bench/inference_speed.py CHECKPOINT [--seconds 5] [--out bench/results/inference_speed.md]
    python bench/inference_speed.py --config configs/refcoco_vilt.yaml --set model.encoder.pretrained=null \
        model.encoder.hidden_size=768 model.encoder.num_layers=12 model.encoder.intermediate_size=3072

The second form times a recipe's architecture with random weights (timing does not depend on
the values; here ViLT-B/32 at 384 px with SimVG's head, whose pretrained weights come from a
hub this machine cannot reach).

Target (SimVG's point): the token branch adds <= 5% to the encoder's own forward time, and
token-only inference is faster than decoder-branch inference.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from simvg.benchmark import benchmark_inference, cpu_name, format_table
from simvg.config import load_config
from simvg.inference import Grounder
from simvg.models import build_model

VOCAB_SIZE = 30522  # BERT uncased, ViLT's and MiniLM's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", help="a checkpoint directory (or --config)")
    parser.add_argument("--config", type=Path, help="time this recipe's model with random weights instead")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for --config")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing per (batch, mode)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "inference_speed.md")
    args = parser.parse_args()
    if (args.checkpoint is None) == (args.config is None):
        parser.error("give a checkpoint directory or --config, not both")
    if args.config is not None:
        config = load_config(args.config, args.set)
        model = build_model(config.model, VOCAB_SIZE)
    else:
        grounder = Grounder.from_pretrained(args.checkpoint, device="cpu")
        model, config = grounder.model, grounder.config
    rows = benchmark_inference(model, config, args.batch_sizes, args.seconds)
    text = (f"{format_table(rows)}\n\nMachine: {cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
            f"fp32. Command: `python bench/inference_speed.py {' '.join(sys.argv[1:])}`\n")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
