"""From model outputs to one box and score per phrase."""

from __future__ import annotations

import torch

BRANCHES = ("token", "decoder")


def select_boxes(outputs: dict, branch: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The predicted box and score of ``branch`` ("token" or "decoder").

    Returns boxes (B, 4) normalised cx, cy, w, h in the letterbox frame and scores (B,) the
    object probability; a branch with several queries (the decoder branch; a "simvg" token
    branch with num_queries > 1) keeps its most confident one.
    """
    if branch not in BRANCHES:
        raise ValueError(f"unknown branch '{branch}'; choose one of: {', '.join(BRANCHES)}")
    if branch not in outputs:
        raise ValueError(f"the model produced no '{branch}' branch output (does it have a decoder branch?)")
    out = outputs[branch]
    probs = out["logits"].float().softmax(-1)[..., 0]
    boxes = out["boxes"].float()
    if boxes.dim() == 3:
        best = probs.argmax(dim=1)
        rows = torch.arange(len(best), device=best.device)
        return boxes[rows, best], probs[rows, best]
    return boxes, probs
