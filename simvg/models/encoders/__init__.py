"""Encoder backends behind one interface (see :class:`EncoderOutput`)."""

from __future__ import annotations

from torch import nn

from simvg.config import ModelConfig
from simvg.models.encoders.base import EncoderOutput
from simvg.models.encoders.hybrid import HybridEncoder
from simvg.models.encoders.vilt import ViltEncoder

ENCODERS = {"hybrid": HybridEncoder, "vilt": ViltEncoder}


def build_encoder(config: ModelConfig, vocab_size: int, backbone_config: dict | None = None) -> nn.Module:
    """The encoder named by ``config.encoder.type``; ``backbone_config`` rebuilds a saved structure."""
    kind = config.encoder.type
    if kind not in ENCODERS:
        raise ValueError(f"unknown encoder.type '{kind}'; choose one of: {', '.join(ENCODERS)}")
    return ENCODERS[kind](config.encoder, config.image_size, vocab_size, backbone_config)


__all__ = ["ENCODERS", "EncoderOutput", "HybridEncoder", "ViltEncoder", "build_encoder"]
