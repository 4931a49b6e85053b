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
