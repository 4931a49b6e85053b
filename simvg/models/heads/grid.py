"""Cell centres of the encoder's visual token grid."""

from __future__ import annotations

from functools import lru_cache

import torch


def grid_centres(grid: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
    """(h*w, 2) normalised (x, y) centres of a row-major token grid (a cached tensor: do not
    modify it in place)."""
    return _grid_centres(tuple(grid), torch.device("cpu") if device is None else torch.device(device))


@lru_cache(maxsize=32)
@torch.inference_mode(False)  # a cached tensor may later take part in training's autograd
def _grid_centres(grid: tuple[int, int], device: torch.device) -> torch.Tensor:
    h, w = grid
    ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)
