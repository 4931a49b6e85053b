"""Int8 dynamic quantization for CPU inference: every ``nn.Linear`` of the model's encoder
(its transformer layers and projections) stores int8 weights, one scale per output channel,
and quantizes its input on the fly (PyTorch's dynamic quantization, x86 kernels).
Convolutions, embeddings, layer norms and attention products stay in float32, and so do the
heads: at inference they run folded (`simvg/models/heads/folded_token_branch.py`), which
packed int8 weights cannot be, and the folded float heads were faster than int8 ones
(`bench/int8_scope.py`: the distilled student at batch 1, 7.56 ms per image with the encoder
in int8, 7.72 ms with every linear layer in int8).
Per-channel scales matter: with one scale per weight tensor the distilled SynthRef student
lost 2.3 points of val accuracy (`simvg eval`, once, every linear layer quantized), with one
per channel 0.2 (0.03 with the heads in float).

At batch 1 on a CPU the transformer's linear layers are most of a small model's time; int8
weights read a quarter of the bytes and use the CPU's integer dot-product instructions.
The quantized model is for inference only and is not saved: a checkpoint stays float, and
loading with ``quantize="int8"`` quantizes again.
"""

from __future__ import annotations

import warnings

from torch import nn

QUANTIZATIONS = ("int8",)


# What the quantized rows of benchmarks say (and what their cached results are keyed on).
DESCRIPTION = "encoder's linear layers int8 (per-channel weights, dynamic activations), heads float"


def quantize_for_cpu(model: nn.Module, quantization: str) -> nn.Module:
    """``model`` (a SimVG model in eval mode, on the CPU) with its encoder's ``nn.Linear``
    layers dynamically quantized to ``quantization`` ("int8"); the model is modified in place
    and returned."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization '{quantization}'; choose one of: {', '.join(QUANTIZATIONS)}")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("int8 quantization runs on the CPU only; load the checkpoint with device='cpu'")
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    model.eval()
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        quantize_dynamic(model.encoder, {nn.Linear: per_channel_dynamic_qconfig}, inplace=True)
    return model
