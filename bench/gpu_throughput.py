"""Training and inference throughput, and model FLOP utilisation (MFU), of a recipe's model
on a GPU, bf16: ViLT-B/32 at 384 px with SimVG's head (``--model vilt-b32``, the default:
configs/refcoco_vilt.yaml) or SimVG's BEiT-3-B at 640 px, 32-px patches, 20 text tokens
(``--model beit3-base``: the same recipe's head and training settings, the encoder replaced).

    python bench/gpu_throughput.py [--model vilt-b32|beit3-base] [--config CONFIG.yaml]
        [--set KEY=VALUE ...] [--batch-sizes 32 128] [--steps 20] [--peak-tflops T] [--compile]
        [--out bench/results/gpu_throughput.md]

The model has random weights of the published sizes (ViLT-B/32's: 768 wide, 12 layers;
BEiT-3-B's: 768 wide, 12 multiway layers, 64010 text rows; pretrained weights cost the same
FLOPs); ``--set`` overrides apply after the model's own. The batches are synthetic and already
on the device: this times the model, not the data pipeline (bench/train_speed.py times that).
A training step is forward, the criterion, backward and the optimizer step under the
recipe's autocast. FLOPs per step are counted by torch.utils.flop_counter on one step;
MFU = counted FLOP/s / the GPU's dense bf16 peak (a table of known GPUs, or --peak-tflops).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from simvg.config import load_config
from simvg.data.dataset import Batch
from simvg.engine.optim import autocast, build_optimizer, resolve_amp
from simvg.engine.tasks import GroundingLoss
from simvg.models import build_criterion, build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
VOCAB_SIZE = 30522  # BERT uncased, ViLT's
# ViLT-B/32 (dandelin/vilt-b32-mlm): what the recipe's hub id holds.
VILT_B32 = ["model.encoder.pretrained=null", "model.encoder.hidden_size=768", "model.encoder.num_layers=12",
            "model.encoder.num_heads=12", "model.encoder.intermediate_size=3072", "model.encoder.patch_size=32"]  # fmt: skip
# SimVG's BEiT-3-B (configs/single/ViT-base): 640 px stretched, patch 32, 20 tokens, drop path 0.1.
BEIT3_BASE = ["model.encoder.type=beit3", "model.encoder.pretrained=null", "model.encoder.preset=base",
              "model.encoder.patch_size=32", "model.encoder.attention=sdpa", "model.encoder.dropout=0.0",
              "model.encoder.drop_path=0.1", "model.image_size=640", "model.max_text_length=20"]  # fmt: skip
# --model: (recipe, overrides, text vocabulary)
MODELS = {"vilt-b32": (CONFIGS / "refcoco_vilt.yaml", VILT_B32, VOCAB_SIZE),
          "beit3-base": (CONFIGS / "refcoco_vilt.yaml", BEIT3_BASE, 64010)}  # fmt: skip
# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4,
                    "A100": 312.0, "L40S": 362.1, "L40": 181.0, "L4": 121.0, "A10": 125.0}  # fmt: skip


def peak_for_name(name: str) -> float | None:
    """The dense bf16 peak (TFLOP/s) of a GPU by its CUDA name, None if not in the table."""
    for key, value in PEAK_BF16_TFLOPS.items():  # longer names first where they share a prefix
        if re.search(rf"\b{re.escape(key)}\b", name):  # "L4" is not "L40", "A10" not "A10G"
            return value
    return None


def count_cpu_attention() -> None:
    """Teach torch.utils.flop_counter the CPU's fused attention kernels (it knows the GPU's):
    the same FLOPs as any scaled-dot-product attention of those shapes."""
    aten = torch.ops.aten
    if aten._scaled_dot_product_flash_attention_for_cpu in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    @flop_counter.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    """The device's dense bf16 peak: ``given``, else the table's for a GPU; None for a CPU
    (then no MFU is reported, only the counted FLOPs and their rate)."""
    if given is not None or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    peak = peak_for_name(name)
    if peak is None:
        raise SystemExit(f"no known bf16 peak for '{name}'; pass --peak-tflops")
    return peak


def synthetic_batch(config, batch_size: int, text_tokens: int, device: torch.device) -> Batch:
    """Random uint8 images, full masks, random token ids and target boxes, on ``device``."""
    generator = torch.Generator().manual_seed(0)
    size = config.model.image_size
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=generator)
    input_ids = torch.randint(1000, 2000, (batch_size, text_tokens), generator=generator)
    centres = 0.25 + 0.5 * torch.rand(batch_size, 2, generator=generator)
    sizes = 0.1 + 0.3 * torch.rand(batch_size, 2, generator=generator)
    return Batch(images, torch.ones(batch_size, size, size, dtype=torch.bool), input_ids,
                 torch.ones(batch_size, text_tokens, dtype=torch.bool), torch.cat([centres, sizes], dim=1),
                 [], [], []).to(device)  # fmt: skip


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(config, batch_size: int, args, device: torch.device, vocab_size: int = VOCAB_SIZE) -> dict:
    """One batch size: training steps/s and FLOPs per step, inference (token branch) images/s."""
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = build_model(config.model, vocab_size).to(device)
    module = GroundingLoss(model, build_criterion(config.model, config.loss)).to(device).train()
    optimizer = build_optimizer(module, config.train)
    amp = resolve_amp(config.train.amp, device)
    step_module = torch.compile(module) if args.compile else module
    batch = synthetic_batch(config, batch_size, args.text_tokens, device)

    def train_step() -> None:
        with autocast(device, amp):
            loss, _ = step_module(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        with autocast(device, amp):
            loss, _ = module(batch)
        loss.backward()
    optimizer.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    for _ in range(args.warmup):
        train_step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        train_step()
    synchronize(device)
    step_s = (time.perf_counter() - start) / args.steps

    model.eval()
    with torch.inference_mode(), autocast(device, amp):
        inputs = (batch.images, batch.pixel_mask, batch.input_ids, batch.text_mask)
        for _ in range(args.warmup):
            model(*inputs, use_decoder=False)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            model(*inputs, use_decoder=False)
        synchronize(device)
        infer_s = (time.perf_counter() - start) / args.steps
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"batch": batch_size, "step_ms": 1000 * step_s, "train_images_s": batch_size / step_s,
            "gflop_per_step": flops / 1e9, "tflops": flops / step_s / 1e12, "infer_images_s": batch_size / infer_s,
            "peak_memory_gib": memory}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(MODELS), default="vilt-b32")
    parser.add_argument("--config", type=Path, default=None, help="recipe (default: the model's, see MODELS)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides, after the model's own (random weights of its published sizes)")  # fmt: skip
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--text-tokens", type=int, default=20, help="phrase length incl. [CLS]/[SEP] (RefCOCO: ~10-20)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training step's module")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None,
                        help="results file (default bench/results/gpu_throughput.md, _beit3-base.md for BEiT-3)")  # fmt: skip
    args = parser.parse_args(argv)
    recipe, model_overrides, vocab_size = MODELS[args.model]
    if args.out is None:
        suffix = "" if args.model == "vilt-b32" else f"_{args.model}"
        args.out = Path(__file__).parent / "results" / f"gpu_throughput{suffix}.md"
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    config = load_config(args.config or recipe, model_overrides + args.set)
    encoder = config.model.encoder
    count_cpu_attention()
    peak = peak_tflops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak_text = "no peak given" if peak is None else f"dense bf16 peak {peak:g} TFLOP/s"
    lines = [f"Model: {args.model} ({encoder.type} encoder, {encoder.preset or encoder.hidden_size}, patch "
             f"{encoder.patch_size}, {encoder.attention} attention), random weights",
             "",
             f"Device: {name} ({peak_text}), autocast {resolve_amp(config.train.amp, device)}, "
             f"{config.model.image_size} px, {args.text_tokens} text tokens, compile {args.compile}",
             "",
             "| batch | train step ms | train images/s | GFLOP / step | TFLOP/s | MFU | inference images/s (token) "
             "| peak memory GiB |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for batch_size in args.batch_sizes:
        r = measure(config, batch_size, args, device, vocab_size)
        mfu = "–" if peak is None else f"{100 * r['tflops'] / peak:.3g}%"
        lines.append(f"| {r['batch']} | {r['step_ms']:.1f} | {r['train_images_s']:.0f} | {r['gflop_per_step']:.4g} | "
                     f"{r['tflops']:.4g} | {mfu} | {r['infer_images_s']:.0f} | "
                     f"{r['peak_memory_gib']:.1f} |")  # fmt: skip
        print(lines[-1], flush=True)
    lines += ["", f"Command: `python bench/gpu_throughput.py {' '.join(argv if argv is not None else sys.argv[1:])}`"]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
