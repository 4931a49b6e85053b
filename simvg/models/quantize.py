"""Int8 dynamic quantization for CPU inference: every ``nn.Linear`` of the model (the
encoder's transformer layers, the heads' projections) stores int8 weights, one scale per
output channel, and quantizes its input on the fly (PyTorch's dynamic quantization, x86
kernels). Convolutions, embeddings, layer norms and attention products stay in float32.
Per-channel scales matter: with one scale per weight tensor the distilled SynthRef student
lost 2.3 points of val accuracy (`simvg eval`, once), with one per channel 0.2.

At batch 1 on a CPU the transformer's linear layers are most of a small model's time; int8
weights read a quarter of the bytes and use the CPU's integer dot-product instructions.
The quantized model is for inference only and is not saved: a checkpoint stays float, and
loading with ``quantize="int8"`` quantizes again.
"""

from __future__ import annotations

import warnings

from torch import nn

QUANTIZATIONS = ("int8",)


def quantize_for_cpu(model: nn.Module, quantization: str) -> nn.Module:
    """``model`` (eval mode, on the CPU) with its ``nn.Linear`` layers dynamically quantized to
    ``quantization`` ("int8"); the model is modified in place and returned."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization '{quantization}'; choose one of: {', '.join(QUANTIZATIONS)}")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("int8 quantization runs on the CPU only; load the checkpoint with device='cpu'")
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(model.eval(), {nn.Linear: per_channel_dynamic_qconfig}, inplace=True)
