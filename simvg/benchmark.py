"""Inference timing of a model: encoder alone, token branch, decoder branch."""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import TypeVar

import torch

from simvg.config import Config

K = TypeVar("K", bound=Hashable)

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


def take_turns(calls: dict[K, Callable[[], object]], seconds: float, min_calls: int = 5) -> dict[K, list[float]]:
    """Seconds of each call of each of ``calls``, which take turns one call at a time (after
    one warm-up call each) for ``seconds`` and at least ``min_calls`` rounds, so that drifting
    machine load and cache state hit them alike."""
    for call in calls.values():
        call()
    times: dict[K, list[float]] = {key: [] for key in calls}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_calls or time.perf_counter() - start < seconds:
        for key, call in calls.items():
            t = time.perf_counter()
            call()
            times[key].append(time.perf_counter() - t)
        rounds += 1
    return times


@torch.inference_mode()
def benchmark_inference(
    model: torch.nn.Module,
    config: Config,
    batch_sizes: Sequence[int] = (1, 32),
    seconds: float = 5.0,
    threads: int | None = None,
    min_calls: int = 5,
) -> list[dict]:
    """Rows {batch, mode, ms_per_batch, ms_fastest, images_per_s} for mode in encoder / token /
    decoder.

    The modes take turns call by call for ``seconds`` per batch size (at least ``min_calls``
    each, after a warm-up call), so that drifting machine load and cache state hit every mode
    alike: the ratios are what count. ``ms_per_batch`` is the median call, ``ms_fastest`` the
    fastest (the least disturbed by other load)."""
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
        if model.config.head.use_decoder:
            modes["decoder"] = lambda inputs=inputs: model(*inputs, use_decoder=True)
        times = take_turns(modes, seconds, min_calls)
        for mode, measured in times.items():
            median = sorted(measured)[len(measured) // 2]
            rows.append({"batch": batch, "mode": mode, "ms_per_batch": 1000 * median, "ms_fastest": 1000 * min(measured),
                         "images_per_s": batch / median})  # fmt: skip
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| batch | mode | ms / batch (median) | images / s | vs encoder (median) | fastest ms | vs encoder (fastest) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    encoder = {r["batch"]: r for r in rows if r["mode"] == "encoder"}
    for r in rows:
        base = encoder.get(r["batch"])
        ratio = r["ms_per_batch"] / base["ms_per_batch"] if base else float("nan")
        fastest = r["ms_fastest"] / base["ms_fastest"] if base else float("nan")
        lines.append(f"| {r['batch']} | {r['mode']} | {r['ms_per_batch']:.1f} | {r['images_per_s']:.1f} | {ratio:.3f}x | "
                     f"{r['ms_fastest']:.1f} | {fastest:.3f}x |")  # fmt: skip
    return "\n".join(lines)


def cpu_name() -> str:
    """The CPU's model name as a benchmark report states it (Linux's /proc/cpuinfo), else what
    ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def save_table(table: str, out: Path) -> None:
    """Print a benchmark's markdown table and write it to ``out`` with the command that made it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"{table}\n\nCommand: `python {' '.join(sys.argv)}`\n")
    print(table)
