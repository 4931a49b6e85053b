"""The interface every encoder backend returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Images enter the model as uint8; the encoder normalises them as its config's
# ``pixel_norm`` says: (mean, std) per RGB channel, of pixels scaled to [0, 1].
PIXEL_NORMS = {
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # ViLT's pretraining: [-1, 1]
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # SimVG's BEiT-3 recipes
}


def normalize_images(images: torch.Tensor, pixel_norm: str = "half") -> torch.Tensor:
    """(B, 3, S, S) uint8 RGB -> float (B, 3, S, S), (x / 255 - mean) / std per channel."""
    mean, std = (torch.tensor(v, device=images.device).view(1, 3, 1, 1) for v in PIXEL_NORMS[pixel_norm])
    return (images.float() / 255.0 - mean) / std


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
