"""The interface of every encoder backend: the :class:`Encoder` base class and what it returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Images enter the model as uint8 RGB; the encoder normalises them with one of these
# per-channel (mean, std) pairs, on the [0, 1] scale (``model.encoder.pixel_normalization``).
PIXEL_NORMALIZATIONS = {
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # ViLT's (and BEiT-3's own fine-tuning)
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # SimVG's (mmcv 123.675/58.395, ...)
}


def normalize_images(images: torch.Tensor, kind: str = "half") -> torch.Tensor:
    """(B, 3, S, S) uint8 RGB -> float (x / 255 - mean) / std, per channel, with the
    :data:`PIXEL_NORMALIZATIONS` pair ``kind``."""
    mean, std = (torch.tensor(v, device=images.device).view(3, 1, 1) for v in PIXEL_NORMALIZATIONS[kind])
    return (images.float() / 255.0 - mean) / std


class Encoder(nn.Module):
    """What the heads and the training code may ask of an encoder backend (registered in
    ``simvg.models.encoders.ENCODERS``). A backend sets ``hidden_size`` and implements
    ``forward`` -> :class:`EncoderOutput` and :meth:`backbone_config`.

    hidden_size: int, the width D of every token it returns.
    stem: its visual stem (a ``ConvStem``, whose stage outputs are ``stem_features``), or None.
    pixel_normalization: the :data:`PIXEL_NORMALIZATIONS` key it normalises images with.
    """

    default_pixel_normalization = "half"

    def __init__(self, pixel_normalization: str | None = None):
        super().__init__()
        self.hidden_size: int = 0
        self.stem: nn.Module | None = None
        self.pixel_normalization = pixel_normalization or self.default_pixel_normalization

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 -> float, as this encoder's visual input expects."""
        return normalize_images(images, self.pixel_normalization)

    def backbone_config(self) -> dict:
        """JSON-serialisable structure, saved in checkpoints: the backend's constructor rebuilds
        the same modules from it (weights come from the checkpoint)."""
        raise NotImplementedError

    def word_embedding_matrix(self) -> torch.Tensor | None:
        """(vocab, D) input embedding of every word, or None where the backend has no use for
        it (the word-alignment loss needs the hybrid's)."""
        return None


@dataclass
class EncoderOutput:
    """What the single-stream encoder hands to the heads.

    object_token: (B, D) the encoder's own object (vision CLS) token.
    visual_tokens: (B, N, D) image tokens, row-major over a grid of ``grid`` = (h, w).
    visual_mask: (B, N) bool, True where the token covers image pixels (not padding).
    text_tokens: (B, L, D); text_mask: (B, L) bool.
    stem_features: feature maps of the visual stem stages (hybrid only), for distillation.
    visual_content: (B, N, D) the visual tokens' content before fusion with the text (no
        position), where the backbone has one of its own (hybrid only), for word alignment.
    text_embeddings: (B, L, D) the phrase's input embeddings (words, positions, before any
        layer), for heads that read the words themselves (the landmark pointer).
    """

    object_token: torch.Tensor
    visual_tokens: torch.Tensor
    visual_mask: torch.Tensor
    grid: tuple[int, int]
    text_tokens: torch.Tensor
    text_mask: torch.Tensor
    stem_features: list[torch.Tensor]
    visual_content: torch.Tensor | None = None
    text_embeddings: torch.Tensor | None = None


def token_grid_mask(pixel_mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, S, S) bool pixel mask -> (B, h*w) bool: a token is valid if its cell has any image pixel."""
    pooled = torch.nn.functional.adaptive_max_pool2d(pixel_mask[:, None].float(), grid)
    return pooled.flatten(1) > 0
