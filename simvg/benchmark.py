"""Inference timing of a model: encoder alone, token branch, decoder branch."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from simvg.config import Config

TEXT_TOKENS = 10  # a typical referring expression ("the star below the red circle") with [CLS]/[SEP]


def synthetic_inputs(config: Config, batch_size: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random uint8 images, a full pixel mask and TEXT_TOKENS token ids per sample."""
    generator = torch.Generator().manual_seed(seed)
    size = config.model.image_size
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=generator)
    pixel_mask = torch.ones(batch_size, size, size, dtype=torch.bool)
    input_ids = torch.randint(1000, 2000, (batch_size, TEXT_TOKENS), generator=generator)
    text_mask = torch.ones(batch_size, TEXT_TOKENS, dtype=torch.bool)
    return images, pixel_mask, input_ids, text_mask


def time_call(fn, seconds: float, min_iters: int = 3, warmup: int = 2) -> float:
    """Median seconds per call of ``fn`` over at least ``min_iters`` calls and ``seconds``."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


@torch.inference_mode()
def benchmark_inference(
    model: torch.nn.Module,
    config: Config,
    batch_sizes: Sequence[int] = (1, 32),
    seconds: float = 5.0,
    threads: int | None = None,
    rounds: int = 5,
) -> list[dict]:
    """Rows {batch, mode, ms_per_batch, images_per_s} for mode in encoder / token / decoder.

    Each mode is timed in ``rounds`` alternating rounds of ``seconds / rounds`` (median of the
    rounds), so that drifting machine load hits every mode alike: the ratios are what count."""
    if threads is not None:
        torch.set_num_threads(threads)
    model.eval()
    rows = []
    for batch in batch_sizes:
        inputs = synthetic_inputs(config, batch)
        modes = {
            "encoder": lambda inputs=inputs: model.encoder(*inputs),
            "token": lambda inputs=inputs: model(*inputs, use_decoder=False),
        }
        if getattr(model, "decoder_branch", None) is not None:
            modes["decoder"] = lambda inputs=inputs: model(*inputs, use_decoder=True)
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(rounds):
            for mode, fn in modes.items():
                times[mode].append(time_call(fn, seconds / rounds))
        for mode, measured in times.items():
            seconds_per_call = sorted(measured)[len(measured) // 2]
            rows.append({"batch": batch, "mode": mode, "ms_per_batch": 1000 * seconds_per_call,
                         "images_per_s": batch / seconds_per_call})  # fmt: skip
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| batch | mode | ms / batch | images / s | vs encoder |", "|---|---|---|---|---|"]
    encoder = {r["batch"]: r["ms_per_batch"] for r in rows if r["mode"] == "encoder"}
    for r in rows:
        ratio = r["ms_per_batch"] / encoder[r["batch"]] if r["batch"] in encoder else float("nan")
        lines.append(f"| {r['batch']} | {r['mode']} | {r['ms_per_batch']:.1f} | {r['images_per_s']:.1f} | {ratio:.3f}x |")
    return "\n".join(lines)
