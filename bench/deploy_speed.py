"""Batch-1 ``Grounder.predict`` speed of one checkpoint on each deployment backend, side by
side: torch float32, torch int8 (``quantize="int8"``), onnxruntime float32 and onnxruntime
int8 (``simvg export --format onnx --int8``).

    python bench/deploy_speed.py [CHECKPOINT] [--onnx DIR] [--seconds 60] [--out FILE]

CHECKPOINT: default the shipped student. --onnx: its ONNX export with --int8 (default:
exported into a temporary folder first). Each call is one image file and one phrase, as a
user calls it; the four take turns, one call each (``simvg.benchmark.take_turns``), so a
change of machine load hits them alike; medians and fastest calls. The machine's load
average before and after is printed with the table: on a shared machine the ratios are what
count. Writes bench/results/deploy_speed.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import torch

from simvg.benchmark import cpu_name, save_table, take_turns
from simvg.inference import Grounder
from simvg.weights import DEFAULT_MODEL_DIR

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "examples" / "synthref_0000001.png"
PHRASE = "the small red circle left of the blue square"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--onnx", help="the checkpoint's ONNX export with --int8 (default: exported now)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "deploy_speed.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = args.onnx
        if onnx_dir is None:
            from simvg.cli import main as simvg

            onnx_dir = str(Path(tmp) / "onnx")
            simvg(["export", args.checkpoint, onnx_dir, "--format", "onnx", "--int8"])
        grounders = {
            ("torch", "float32"): Grounder.from_pretrained(args.checkpoint, device="cpu"),
            ("torch", "int8"): Grounder.from_pretrained(args.checkpoint, device="cpu", quantize="int8"),
            ("onnxruntime", "float32"): Grounder.from_pretrained(onnx_dir, backend="onnxruntime"),
            ("onnxruntime", "int8"): Grounder.from_pretrained(onnx_dir, backend="onnxruntime", quantize="int8"),
        }
        sizes = {
            ("torch", "float32"): Path(args.checkpoint) / "model.safetensors",
            ("torch", "int8"): Path(args.checkpoint) / "model.safetensors",
            ("onnxruntime", "float32"): Path(onnx_dir) / "model.onnx",
            ("onnxruntime", "int8"): Path(onnx_dir) / "model.int8.onnx",
        }
        calls = {key: (lambda g=g: g.predict(IMAGE, PHRASE)) for key, g in grounders.items()}
        load_before = os.getloadavg()
        times = take_turns(calls, args.seconds)
        load_after = os.getloadavg()
        files = {key: path.stat().st_size / 2**20 for key, path in sizes.items()}
    base = statistics.median(times[("torch", "float32")])
    lines = [
        f"`Grounder.predict(image file, phrase)` at batch 1 on {cpu_name()}, {torch.get_num_threads()} threads "
        f"(torch and onnxruntime alike), {Path(args.checkpoint).name}, token branch; {len(times[('torch', 'float32')])} "
        f"calls each, the four taking turns. Load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after "
        f"on {os.cpu_count()} cores.",
        "",
        "| backend | weights | file MiB | median ms | fastest ms | speed vs torch float32 (median) |",
        "|---|---|---|---|---|---|",
    ]
    for (backend, precision), measured in times.items():
        median = statistics.median(measured)
        lines.append(f"| {backend} | {precision} | {files[(backend, precision)]:.1f} | {1000 * median:.2f} | "
                     f"{1000 * min(measured):.2f} | {base / median:.2f}x |")  # fmt: skip
    save_table("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
