"""Optimizer (pretrained encoder at a lower learning rate), schedule, mixed precision."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import nn

from simvg.config import TrainConfig

# Encoder parts that start from scratch (the hybrid's visual side) train at the head's rate
# times `stem_lr_mult`; the rest of the encoder is pretrained and trains at `encoder_lr_mult`.
FRESH_ENCODER_PARTS = ("stem.", "visual_proj.", "content_norm.", "visual_pos", "object_token", "visual_norm.",
                       "relative_position_bias.")


def parameter_group_name(name: str) -> str:
    """"head", "encoder" (pretrained), "fresh" or "landmark_pointer" for a parameter name such
    as ``model.encoder.layers.0.attention...``; the first ``encoder`` component marks the
    encoder, whatever wraps the model (a loss module, a distillation module, DDP)."""
    parts = name.split(".")
    if "landmark_relation" in parts and "pointer" in parts:
        return "landmark_pointer"
    if "encoder" not in parts:
        return "head"
    inside = ".".join(parts[parts.index("encoder") + 1 :])
    return "fresh" if inside.startswith(FRESH_ENCODER_PARTS) else "encoder"


def parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    groups: dict[str, list[nn.Parameter]] = {"head": [], "encoder": [], "fresh": [], "landmark_pointer": []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups[parameter_group_name(name)].append(param)
    mult = {"head": 1.0, "encoder": config.encoder_lr_mult, "fresh": config.stem_lr_mult,
            "landmark_pointer": config.landmark_pointer_lr_mult}  # fmt: skip
    return [
        {"params": params, "lr": config.lr * mult[name], "name": name}
        for name, params in groups.items()
        if params
    ]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """``train.optimizer``: AdamW (decoupled weight decay) or Adam (weight decay added to the
    gradient: SimVG's torch.optim.Adam), with ``train.amsgrad`` (SimVG: on), SimVG's
    betas/eps and the configured weight decay (SimVG: 0, where the two are the same)."""
    groups = parameter_groups(model, config)
    # The fused kernel is one pass over all tensors instead of a dozen per tensor.
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    kind = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[config.optimizer]
    return kind(
        groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps, weight_decay=config.weight_decay,
        amsgrad=config.amsgrad, fused=fused,
    )  # fmt: skip


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of each group's base learning rate at ``step``: linear warm-up, then
    cosine to ``min_lr_ratio``, ``step`` decay (x0.1 at each milestone), or constant."""
    if config.warmup_steps > 0 and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "step":
        passed = sum(step >= m * config.max_steps for m in config.step_milestones)
        return 0.1**passed
    if config.schedule == "cosine":
        span = max(1, config.max_steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown train.schedule '{config.schedule}'; choose cosine, step or constant")


def set_learning_rate(optimizer: torch.optim.Optimizer, base_lrs: list[float], factor: float) -> None:
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base * factor


def cpu_supports_bf16() -> bool:
    capability = torch.backends.cpu.get_cpu_capability()
    return "AVX512" in capability or "AMX" in capability


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device``; None means full fp32."""
    if amp == "none":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if amp != "auto":
        raise ValueError(f"unknown train.amp '{amp}'; choose auto, bf16, fp16 or none")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
