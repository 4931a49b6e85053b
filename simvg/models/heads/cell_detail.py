"""Finer stem features per token cell (ours, for the "cells" head's boxes; SimVG has no stem):
each cell's 2 x 2 sub-cells of the stem map one stage before the token grid, stacked along
channels (space-to-depth)."""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F


def cell_detail(features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A (B, C, H, W) map at twice the token grid's resolution -> (B, h*w, 4C): each token
    cell's 2 x 2 sub-cells stacked (space-to-depth); the map is zero-padded to (2h, 2w)."""
    return F.pixel_unshuffle(_padded(features, grid), 2).flatten(2).transpose(1, 2)


def gather_cell_detail(features: torch.Tensor, grid: tuple[int, int], cells: torch.Tensor) -> torch.Tensor:
    """:func:`cell_detail` of the cells ``cells`` (B, K) (row-major token indices) only ->
    (B, K, 4C), read straight from the (B, C, H, W) map."""
    features = _padded(features, grid)
    batch, channels, _, width = features.shape
    corner = (cells // grid[1]) * (2 * width) + (cells % grid[1]) * 2  # each cell's top-left sub-cell
    # pixel_unshuffle's channel order: channel-major, then the sub-cell's row, then its column.
    spots = (corner[..., None] + _sub_cell_offsets(width, cells.device)).view(batch, 1, -1)
    picked = features.flatten(2).gather(2, spots.expand(-1, channels, -1))  # (B, C, K * 4)
    return picked.view(batch, channels, cells.shape[1], 4).transpose(1, 2).reshape(batch, cells.shape[1], 4 * channels)


@lru_cache(maxsize=16)
@torch.inference_mode(False)  # a cached tensor may later take part in training's autograd
def _sub_cell_offsets(width: int, device: torch.device) -> torch.Tensor:
    """(4,) flat offsets of a cell's 2 x 2 sub-cells from its top-left one, in a map ``width`` wide."""
    return torch.tensor([0, 1, width, width + 1], device=device)


def _padded(features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    h, w = grid
    if features.shape[2] == 2 * h and features.shape[3] == 2 * w:
        return features
    return F.pad(features, (0, 2 * w - features.shape[3], 0, 2 * h - features.shape[2]))
