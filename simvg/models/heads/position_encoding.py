"""2-D sine position encoding of a token grid (DETR's PositionEmbeddingSine, normalised)."""

from __future__ import annotations

import math

import torch


def sine_position_encoding(grid: tuple[int, int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(h*w, dim) encodings, row-major; half the channels encode y, half encode x."""
    h, w = grid
    quarter = dim // 4
    y = (torch.arange(h, dtype=torch.float32) + 0.5) / h * 2 * math.pi
    x = (torch.arange(w, dtype=torch.float32) + 0.5) / w * 2 * math.pi
    freqs = temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    y = y[:, None] / freqs
    x = x[:, None] / freqs
    pos_y = torch.cat([y.sin(), y.cos()], dim=1)[:, None, :].expand(h, w, 2 * quarter)
    pos_x = torch.cat([x.sin(), x.cos()], dim=1)[None, :, :].expand(h, w, 2 * quarter)
    encoding = torch.cat([pos_y, pos_x], dim=2).reshape(h * w, 4 * quarter)
    if encoding.shape[1] < dim:
        encoding = torch.nn.functional.pad(encoding, (0, dim - encoding.shape[1]))
    return encoding


def detr_sine_position_encoding(valid: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """DETR's 2-D sine position encoding (normalised, as SimVG's head computes it through
    detrex's ``PositionEmbeddingSine``) of a token grid with padding.

    valid: (B, h, w) bool, True on tokens that cover the image -> (B, h*w, dim): the first half of
    the channels encode y, the second x, each as sin/cos pairs of one frequency. A token's
    coordinate is the count of valid tokens up to it along its column (y) or row (x), divided by
    that column's (row's) total and scaled to 2 pi.
    """
    quarter = dim // 2  # channels per axis
    y = valid.cumsum(1, dtype=torch.float32)
    x = valid.cumsum(2, dtype=torch.float32)
    y = y / (y[:, -1:, :] + 1e-6) * 2 * math.pi
    x = x / (x[:, :, -1:] + 1e-6) * 2 * math.pi
    steps = torch.arange(quarter, dtype=torch.float32, device=valid.device)
    freqs = temperature ** (2 * torch.div(steps, 2, rounding_mode="floor") / quarter)
    pos_y, pos_x = y[..., None] / freqs, x[..., None] / freqs
    # sin on even channels, cos on odd ones, interleaved.
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).flatten(1, 2)


def simvg_text_position_encoding(length: int, dim: int) -> torch.Tensor:
    """The 1-D text positions SimVG's released query generator adds to the text keys: (length,
    dim). Its code computes the sine frequencies 1 / 10000^(2i / dim) and casts them to integers,
    which keeps the first (1) and zeroes every other; so channel 0 is sin(p), channel 1 cos(p),
    and the other channels are sin(0) = 0 (even) and cos(0) = 1 (odd) at every position p. The
    released weights were trained with exactly these, so they are reproduced, not corrected."""
    if dim % 2:
        raise ValueError(f"text position encoding needs an even width, got {dim}")
    encoding = torch.zeros(length, dim)
    encoding[:, 1::2] = 1.0
    positions = torch.arange(length, dtype=torch.float32)
    encoding[:, 0], encoding[:, 1] = positions.sin(), positions.cos()
    return encoding
