"""A learned attention bias for each 2-D offset between two visual tokens (Swin's relative
position bias, one table shared by all layers as T5 shares its 1-D one).

With only absolute position embeddings, "the circle closest to the red square" asks the
pretrained attention to learn distances from the few hundred steps a CPU run has; an
offset-indexed bias lets a head attend by distance from the first step. The table starts as
ALiBi's linear distance penalty in 2-D (head h of H: -2^(-8h/H) x the Euclidean offset in
cells), so some heads start local and others almost global; at a
learning rate of 3e-4 a zero table would barely move in a CPU run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RelativePositionBias(nn.Module):
    """table: (heads, 2h-1, 2w-1) bias for a query->key offset (dy, dx) on an (h, w) grid."""

    def __init__(self, num_heads: int, grid: tuple[int, int]):
        super().__init__()
        rows, cols = grid
        dy = torch.arange(1 - rows, rows, dtype=torch.float32)
        dx = torch.arange(1 - cols, cols, dtype=torch.float32)
        distance = torch.hypot(dy[:, None], dx[None, :])
        slopes = 2.0 ** (-8.0 * torch.arange(1, num_heads + 1, dtype=torch.float32) / num_heads)
        self.table = nn.Parameter(-slopes[:, None, None] * distance)

    def visual_bias(self, grid: tuple[int, int]) -> torch.Tensor:
        """(heads, h*w, h*w) bias between the visual tokens of a row-major (h, w) grid; offsets
        beyond the table (a larger grid than trained) take the table's edge value."""
        rows, cols = grid
        reach_y = (self.table.shape[1] - 1) // 2
        reach_x = (self.table.shape[2] - 1) // 2
        ys, xs = torch.meshgrid(
            torch.arange(rows, device=self.table.device), torch.arange(cols, device=self.table.device), indexing="ij"
        )
        ys, xs = ys.flatten(), xs.flatten()
        dy = (ys[None, :] - ys[:, None]).clamp(-reach_y, reach_y) + reach_y
        dx = (xs[None, :] - xs[:, None]).clamp(-reach_x, reach_x) + reach_x
        return self.table[:, dy, dx]

    def forward(self, grid: tuple[int, int], num_leading: int) -> torch.Tensor:
        """(1, heads, T, T) additive attention bias for a sequence of ``num_leading`` tokens
        (object token, text) followed by the grid's visual tokens; zero outside visual pairs."""
        bias = self.visual_bias(grid)
        return F.pad(bias, (num_leading, 0, num_leading, 0))[None]
