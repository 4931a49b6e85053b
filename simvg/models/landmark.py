"""Landmark offsets: for a relational phrase ("the circle closest to the red square"), every
fused visual token predicts where the landmark (the red square) lies relative to itself.

Relational phrases, "closest" and "farthest" above all, are what the 20-minute teacher
misreads most (it picks among the candidates no better than chance): the answer depends on each
candidate's distance to the landmark, and the grounding loss alone says only which cell won.
This dense target asks every token to know the landmark's offset, which is what comparing
candidates needs. A training aid where the annotations name the landmark (SynthRef's
programs; see ``GroundingRecord.landmark_box``); its head lives in the training module, not
in the saved model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from simvg.models.criterion import point_cells
from simvg.models.heads.grid import grid_centres


class LandmarkOffsetLoss(nn.Module):
    """forward(visual (B, N, W) fused visual tokens, visual_mask (B, N) bool, grid (h, w),
    landmarks: B normalised (cx, cy) or None) -> scalar smooth-L1 between each valid token's
    predicted offset and (landmark centre - token's cell centre), in units of the image side,
    averaged over the valid tokens of the samples that have a landmark (0 without any)."""

    def __init__(self, width: int):
        super().__init__()
        self.offset = nn.Linear(width, 2)

    def forward(
        self,
        visual: torch.Tensor,
        visual_mask: torch.Tensor,
        grid: tuple[int, int],
        landmarks: list[tuple[float, float] | None],
    ) -> torch.Tensor:
        rows = [i for i, landmark in enumerate(landmarks) if landmark is not None]
        predicted = self.offset(visual[rows] if rows else visual[:1]).float()
        if not rows:
            return predicted.sum() * 0.0
        centres = torch.tensor([landmarks[i] for i in rows], dtype=torch.float32, device=visual.device)
        target = centres[:, None, :] - grid_centres(grid, visual.device)[None]  # (R, N, 2)
        error = F.smooth_l1_loss(predicted, target, beta=0.05, reduction="none").sum(-1)
        valid = visual_mask[rows].float()
        return (error * valid).sum() / valid.sum().clamp(min=1.0)


def landmark_reference_loss(
    landmark_logits: torch.Tensor, grid: tuple[int, int], landmarks: list[tuple[float, float] | None]
) -> torch.Tensor:
    """Cross-entropy of the landmark pointer's (B, h*w) attention logits
    (:mod:`~simvg.models.heads.landmark_relation`) against the cell holding each phrase's
    landmark (B normalised (cx, cy) or None), averaged over the samples that have one (0 if
    none does)."""
    rows = [i for i, landmark in enumerate(landmarks) if landmark is not None]
    if not rows:  # a zero still tied to the graph; clamped, as masked cells hold float32's lowest value
        return landmark_logits.clamp(-1.0, 1.0).sum() * 0.0
    centres = torch.tensor([landmarks[i] for i in rows], dtype=torch.float32, device=landmark_logits.device)
    return F.cross_entropy(landmark_logits[rows].float(), point_cells(centres, grid))
