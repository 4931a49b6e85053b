"""Encoder backends behind one interface (see :class:`EncoderOutput`)."""

from __future__ import annotations

from simvg.config import ModelConfig
from simvg.models.encoders.base import Encoder, EncoderOutput
from simvg.models.encoders.beit3 import BEiT3Encoder
from simvg.models.encoders.hybrid import HybridEncoder
from simvg.models.encoders.vilt import ViltEncoder

# model.encoder.type -> backend; the config's check and the tests read this dict.
ENCODERS: dict[str, type[Encoder]] = {"hybrid": HybridEncoder, "vilt": ViltEncoder, "beit3": BEiT3Encoder}


def build_encoder(config: ModelConfig, vocab_size: int, backbone_config: dict | None = None) -> Encoder:
    """The encoder named by ``config.encoder.type``; ``backbone_config`` rebuilds a saved structure."""
    kind = config.encoder.type
    if kind not in ENCODERS:
        raise ValueError(f"unknown encoder.type '{kind}'; choose one of: {', '.join(ENCODERS)}")
    return ENCODERS[kind](config.encoder, config.image_size, vocab_size, backbone_config)


__all__ = ["BEiT3Encoder", "ENCODERS", "Encoder", "EncoderOutput", "HybridEncoder", "ViltEncoder", "build_encoder"]
