"""Training throughput: a training step vs the data pipeline that feeds it, and the CPU
choices that make the step fast (eager attention, fused AdamW, frozen word embeddings).

    python bench/train_speed.py --data-root DATA_ROOT [--config configs/synthref_hybrid.yaml]

Prints (and writes to --out, default bench/results/train_speed.md) images/s of (a) full training steps (forward, backward, optimizer) on real batches,
(b) the data pipeline alone (decode, letterbox, augmentation, tokenisation) in one process,
and their ratio; then (c) the step time with each CPU choice undone, measured in this run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from simvg.config import load_config
from simvg.data.dataset import Collator
from simvg.engine.optim import autocast, build_optimizer, resolve_amp
from simvg.engine.tasks import (
    GroundingLoss,
    build_auxiliary_losses,
    build_datasets,
    quiet_transformers,
    tokenizer_source,
)
from simvg.models import build_criterion, build_model
from simvg.models.pretrained import load_tokenizer


def step_time(config, batches, steps: int, tokenizer, records) -> float:
    torch.manual_seed(0)
    model = build_model(config.model, len(tokenizer))
    auxiliary = build_auxiliary_losses(model, config, tokenizer, records)
    module = GroundingLoss(model, build_criterion(config.model, config.loss), auxiliary).train()
    optimizer = build_optimizer(module, config.train)
    device = torch.device("cpu")
    amp = resolve_amp(config.train.amp, device)
    times = []
    for i in range(steps + 2):
        batch = batches[i % len(batches)]
        start = time.perf_counter()
        with autocast(device, amp):
            loss, _ = module(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    times = sorted(times[2:])
    return times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--config", default="configs/synthref_hybrid.yaml")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--samples", type=int, default=400, help="samples timed through the pipeline")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_speed.md")
    args = parser.parse_args()
    lines: list[str] = []

    def emit(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    quiet_transformers()
    config = load_config(args.config)
    tokenizer = load_tokenizer(tokenizer_source(config))
    train_set, _ = build_datasets(config, args.data_root, tokenizer)
    size = config.train.batch_size

    start = time.perf_counter()
    samples = [train_set[i] for i in range(args.samples)]
    pipeline = args.samples / (time.perf_counter() - start)
    collate = Collator(tokenizer.pad_token_id)
    batches = [collate(samples[i : i + size]) for i in range(0, args.samples - size + 1, size)]

    step = step_time(config, batches, args.steps, tokenizer, train_set.records)
    training = size / step
    emit(f"threads: {torch.get_num_threads()}, batch {size}, image {config.model.image_size} px, amp {config.train.amp}\n")
    emit("| what | images / s |\n|---|---|")
    emit(f"| training step (forward + backward + AdamW) | {training:.1f} |")
    emit(f"| data pipeline, one process | {pipeline:.1f} |")
    emit(f"| pipeline / training | {pipeline / training:.1f}x |\n")

    variants = [
        ("as configured", []),
        ("sdpa attention instead of eager", ["model.encoder.attention=sdpa"]),
        ("word embeddings trained", ["model.encoder.freeze_word_embeddings=false"]),
        ("no mixed precision (fp32)", ["train.amp=none"]),
    ]
    emit("| step variant | s / step | images / s |\n|---|---|---|")
    for name, overrides in variants:
        seconds = step_time(load_config(args.config, overrides), batches, args.steps, tokenizer, train_set.records)
        emit(f"| {name} | {seconds:.3f} | {size / seconds:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + f"\n\nCommand: `python {' '.join(sys.argv)}`\n")


if __name__ == "__main__":
    main()
